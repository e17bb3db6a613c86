"""Applying sparsity to a loaded model: the FFN patch, its runtime state, the dynamic controller, predictors, and
the batch-1 sparse decoder with its C kernels."""
