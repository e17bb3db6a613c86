"""Measuring a sparse model against its dense self: quality (KL, top-1), quality vs sparsity, decode speed against
the memory roofline, and the TEAL input-sparsity baseline those benchmarks compare with."""
