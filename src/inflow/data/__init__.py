"""Stage 1, data: the built-in synthetic set, image folders, the manifest and its splits."""
