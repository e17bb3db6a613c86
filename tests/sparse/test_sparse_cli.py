"""`sparsealign sparsify profile|calibrate|evaluate|generate` through the real console script."""

from __future__ import annotations

import json

import pytest
from tests.conftest import CliResult, assert_one_line_error


@pytest.fixture
def inproc(capsys):
    """The CLI in-process (saves a torch import per call; the console script itself is run once below)."""
    from sparsealign.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, data_dir):
    from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

    code = [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]
    model, tok = tiny_model_and_tokenizer(code[:150], vocab_size=320, hidden_size=32, num_layers=2,
                                          intermediate_size=96)
    return save_pretrained(model, tok, tmp_path_factory.mktemp("m") / "tiny")


@pytest.mark.slow
def test_calibrate_evaluate_generate(cli, inproc, tiny_dir, tmp_path):
    res = cli("sparsify", "calibrate", str(tiny_dir), "--texts", "mbpp", "-n", "30", "--target", "0.6",
              "--set", "predictor.enabled=true", "--set", "predictor.rank=8", "--set", "predictor.epochs=5", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    art = tiny_dir / "sparsity"
    assert out["out"] == str(art) and len(out["thresholds"]) == 2
    assert {p.name for p in art.iterdir()} >= {"sparsity.json", "sparsity.safetensors", "profile"}
    assert (art / "profile" / "profile.png").stat().st_size > 1000

    res = inproc("sparsify", "evaluate", str(tiny_dir), "--texts", "mbpp", "--skip", "600", "-n", "10",
                 "--mode", "dynamic", "--prefill", "dense", "--prompt-tokens", "4", "--out",
                 str(tmp_path / "eval.json"), "--plot", str(tmp_path / "trace.png"), "--json")
    assert res.returncode == 0, res.stderr
    ev = res.json()
    assert ev["mode"] == "dynamic" and ev["apply_info"]["prefill"] == "dense"
    assert abs(ev["realized_sparsity"] - 0.6) < 0.03 and ev["kl_mean"] > 0 and 0 <= ev["top1_agreement"] <= 1
    assert {"flops_skipped", "layers", "controller_state"} <= set(ev)
    assert json.loads((tmp_path / "eval.json").read_text())["kl_mean"] == ev["kl_mean"]
    assert (tmp_path / "trace.png").stat().st_size > 1000

    res = inproc("sparsify", "generate", str(tiny_dir), "--prompt", "def add(a, b):", "--mode", "predictor",
                 "--max-new-tokens", "5", "--json")
    assert res.returncode == 0, res.stderr
    gen = res.json()
    assert gen["new_tokens"] == 5 and gen["layers"][0]["tokens"] == 4 and gen["mode"] == "predictor"


def test_profile_and_one_line_errors(inproc, tiny_dir, tmp_path):
    res = inproc("sparsify", "profile", str(tiny_dir), "-n", "8", "--target", "0.5", "--out", str(tmp_path / "p"),
              "--json")
    assert res.returncode == 0, res.stderr
    layers = res.json()["layers"]
    assert len(layers) == 2 and all(0 <= row["hot_neurons"] <= 1 for row in layers)
    assert (tmp_path / "p" / "profile.safetensors").exists()

    assert_one_line_error(inproc("sparsify", "evaluate", str(tmp_path)), "no sparsity artifacts", "calibrate")
    assert_one_line_error(inproc("sparsify", "calibrate", str(tiny_dir), "--set", "predictor.rnak=3"), "rnak")
    assert_one_line_error(inproc("sparsify", "calibrate", str(tiny_dir), "--texts", "nope.jsonl"), "nope.jsonl")
    assert_one_line_error(inproc("sparsify", "calibrate", "./missing-model"), "missing-model", "not found")


@pytest.mark.real_model
@pytest.mark.slow
def test_calibrating_a_short_name_writes_in_sight_not_into_the_cache(cli, tmp_path):
    """The artifacts of `--model smollm2-135m-instruct` go to runs/<name>/sparsity (printed), not into the hidden
    cache folder of its dequantized copy; evaluate finds them there by default."""
    from pathlib import Path

    from sparsealign.models.loading import resolve_model

    cached = Path(resolve_model("smollm2-135m-instruct").path)
    before = sorted(p.name for p in cached.iterdir())
    res = cli("sparsify", "calibrate", "--model", "smollm2-135m-instruct", "-n", "2", "--target", "0.4")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "runs" / "smollm2-135m-instruct" / "sparsity"
    assert f"artifacts -> {out}" in res.stdout and (out / "sparsity.json").exists()
    assert sorted(p.name for p in cached.iterdir()) == before
    res = cli("sparsify", "evaluate", "--model", "smollm2-135m-instruct", "-n", "1", "--json")
    assert res.returncode == 0, res.stderr
    assert 0.2 < res.json()["realized_sparsity"] < 0.6
