"""Load a causal LM and its tokenizer for evaluation (a local directory or a hub id), on the chosen device."""

from __future__ import annotations

import re
from pathlib import Path

from sparsealign.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine", hint="use --device cpu")
    return device


def load_model_and_tokenizer(path: str, *, device: str = "auto", dtype: str = "auto"):
    """`(model, tokenizer)` in eval mode; the tokenizer pads on the left (decoder-only generation)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(path).expanduser()
    if not local.exists() and not _HUB_ID.match(str(path)):
        raise UserError(f"{path}: model not found (neither a directory nor a hub id)",
                        hint="pass a directory written by save_pretrained, or an org/name hub id")
    if local.is_dir() and not (local / "config.json").exists():
        raise UserError(f"{local}: not a Hugging Face model directory (no config.json)",
                        hint="pass a directory written by save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except OSError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: could not load model ({first})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(pick_device(device))
    model.eval()
    return model, tokenizer
