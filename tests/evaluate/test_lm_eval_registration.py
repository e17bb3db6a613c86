"""The installed `sparsealign-lm-eval.pth` makes plain lm-eval find `--model sparsealign`, lazily: a fresh
interpreter imports neither sparsealign nor torch at start, and the model class loads only when lm-eval asks."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("lm_eval")

PROBE = """
import sys
start = {m for m in ("sparsealign", "torch", "lm_eval") if m in sys.modules}
from lm_eval.api.registry import get_model, model_registry
import lm_eval.models
lazy = isinstance(model_registry._objs.get("sparsealign"), str)
cls = get_model("sparsealign")
print(sorted(start), lazy, cls.__module__ + ":" + cls.__name__, "hf" in model_registry)
"""


def test_plain_lm_eval_registry_finds_the_model_lazily() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[]", "True", "sparsealign.evaluate.lm_eval_model:SparseAlignLM", "True"]


def test_without_site_hooks_the_model_is_absent() -> None:
    """`python -S` skips .pth files: the registration comes from the .pth, nothing else (the wrapper covers -S)."""
    probe = ("import sys; sys.path[:0] = " + repr([p for p in sys.path if p]) + "\n"
             "import lm_eval.models\nfrom lm_eval.api.registry import model_registry\n"
             "print('sparsealign' in model_registry)")
    out = subprocess.run([sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
