"""Exact attribution by replay (MAGIC): functional training, metagradients, replay LDS."""
