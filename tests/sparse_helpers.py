"""Shared by the sparse tests: stories260K (real llama2.c weights, SwiGLU) converted in memory, and real text.

(Plain functions, not a tests/sparse/conftest.py, which would shadow the top-level `conftest` helpers.)"""

from __future__ import annotations

import gzip
import json


def load_stories(data_dir):
    """(model, tokenizer) of stories260K; the tokenizer pads on the left, as batched generation needs."""
    from sparsealign.models.llama2c import read_checkpoint, to_hf_model
    from sparsealign.models.llama2c_tokenizer import build_hf_tokenizer, read_tokenizer

    root = data_dir / "models" / "stories260K"
    cfg, weights = read_checkpoint(root / "stories260K.bin")
    tok = build_hf_tokenizer(*read_tokenizer(root / "tok512.bin"))
    tok.padding_side = "left"
    return to_hf_model(cfg, weights).eval(), tok


def load_code_and_dialogue(data_dir):
    """(MBPP code, HH helpful-base dialogue[:30])."""
    code = [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]
    with gzip.open(data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", "rt") as fh:
        dialogue = [json.loads(line)["chosen"] for _, line in zip(range(30), fh, strict=False)]
    return code, dialogue
