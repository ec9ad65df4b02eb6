"""Models shared by every stage: architectures, the per-sample loss, checkpoint files."""
