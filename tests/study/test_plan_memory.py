"""`study plan` sizes each cell from the study's own load settings: its weight bytes match what the one loader
really holds (parameters + buffers) for a micro-family member at fp32 and bf16, within 5%."""

from __future__ import annotations

import pytest

from sparsealign.models.loading import LoadSettings, load_model, weight_bytes
from sparsealign.models.micro import get_recipe
from sparsealign.models.tiny import build_llama, save_pretrained, train_tokenizer
from sparsealign.study.cells import expand
from sparsealign.study.config import load_study_config
from sparsealign.study.plan import GiB, memory_gib, param_counts


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    """The default study's largest micro size at its recipe's shape (random weights: bytes do not depend on them)."""
    recipe = get_recipe("micro")
    spec = recipe.sizes[-1]
    tok = train_tokenizer([f"def f{i}(x):\n    return x + {i}\n" for i in range(200)], vocab_size=recipe.vocab_size)
    model = build_llama(recipe.vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                        num_heads=spec.num_heads, intermediate_size=spec.intermediate_size, hidden_act="relu")
    return spec.name, save_pretrained(model, tok, tmp_path_factory.mktemp("member") / spec.name)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_plan_weight_bytes_match_the_loaded_model(member, dtype):
    size, path = member
    cfg = load_study_config(None, "default", [f"load.dtype={dtype}"])
    params = param_counts(cfg)[size]
    model, _ = load_model(path, cfg.load)
    real = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert next(model.parameters()).dtype.__str__() == f"torch.{dtype}"
    assert abs(weight_bytes(params, cfg.load) - real) / real < 0.05
    calibrate = next(c for c in expand(cfg) if c.stage == "calibrate" and c.size == size)
    assert memory_gib(calibrate, params, cfg) == pytest.approx(real * 1.2 / GiB, rel=0.05)  # the weights + 20%


def test_bf16_halves_the_planned_inference_memory():
    fp32, bf16 = (load_study_config(None, "default", [f"load.dtype={d}"]) for d in ("float32", "bfloat16"))
    cell = next(c for c in expand(fp32) if c.stage == "eval")
    params = max(p for p in param_counts(fp32).values() if p)
    assert memory_gib(cell, params, bf16) == pytest.approx(memory_gib(cell, params, fp32) / 2, rel=0.01)
    assert LoadSettings(dtype="bfloat16") != LoadSettings()


def test_the_gpu_smoke_script_validates_its_study_on_cpu(data_dir):
    """benchmarks/gpu_smoke.sh (run as is where a GPU is lent) checks the same config and prints its plan here."""
    import os
    import subprocess
    from pathlib import Path

    from conftest import REPO, sparsealign_exe

    exe = sparsealign_exe()
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir)}
    if len(exe) == 1:
        env["SPARSEALIGN"] = exe[0]
    out = subprocess.run(["bash", str(Path(REPO) / "benchmarks" / "gpu_smoke.sh"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "config valid: study reduced" in out.stdout and "eval:micro-xs/dpo/f1.000/static/0.50" in out.stdout
