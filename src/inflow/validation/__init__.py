"""Validation of attributions: LDS, the method comparison, the cleanlab baseline."""
