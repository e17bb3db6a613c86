"""Models: loading HF causal LMs, converting llama2.c checkpoints, and pretraining the embedded micro family."""
