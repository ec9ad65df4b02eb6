"""Stage 3, TracIn: per-checkpoint factors, projection, influence shards, exact top-k, self-influence."""
