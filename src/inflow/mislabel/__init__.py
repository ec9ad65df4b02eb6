"""Stage 4, mislabel ranking: the score that orders training images for review, and its metrics."""
