"""MBPP functional correctness: generation, extraction of the program, sandboxed scoring, pass@k."""
