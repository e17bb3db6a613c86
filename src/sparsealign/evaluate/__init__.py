"""Stage 4 — evaluate: MBPP pass@k in a real sandbox, preference divergence, judge win rates."""
