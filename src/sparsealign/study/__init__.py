"""Stage 5 — study: the align x sparsity x size grid, scaling fits and the report."""
