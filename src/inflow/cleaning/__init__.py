"""Stage 5, cleaning: the review table, cleaned training sets, and what retraining on them buys."""
