"""Shared ground floor: errors, atomic file I/O, progress, figures, statistics."""
