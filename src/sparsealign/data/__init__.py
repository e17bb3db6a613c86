"""Stage 1 — data: preference pairs and MBPP tasks, read from their original formats into one normalised record."""
