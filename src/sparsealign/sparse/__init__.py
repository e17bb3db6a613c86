"""Stage 3 — sparsify: PowerInfer-style activation sparsity with static, predictor and dynamic thresholds."""
