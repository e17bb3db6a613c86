"""Run untrusted Python programs in a sandbox that holds: a service that evaluation, rationales and pretraining share.

Stdlib only (the worker runs as `python -I worker.py` by path), so light commands that import it stay fast.
"""
