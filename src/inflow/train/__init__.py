"""Stage 2, training: the training loop with checkpoints, predictions, retraining on a subset."""
