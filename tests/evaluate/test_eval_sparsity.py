"""`--sparsity/--mode/--prefill` on `eval mbpp` and `eval preference` (real CLI, tiny real Llamas), and the
self-describing artifacts folder that `sparsify calibrate` writes and that is refused on another model."""

from __future__ import annotations

import json
import re

import pytest

from conftest import assert_one_line_error

# end to end: calibrates and runs the eval verbs in subprocesses (~75 s of CPU)
pytestmark = pytest.mark.slow
HH = "hh-rlhf/helpful-base/test.jsonl.gz"


def test_artifacts_describe_their_model(calibrated) -> None:
    meta = json.loads((calibrated / "s50" / "sparsity.json").read_text())
    info = meta["model_info"]
    assert len(info["model_hash"]) == 64 and info["model_source"].endswith("m0")
    assert info["target_sparsity"] == 0.5 and info["sites"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    assert info["modes"] == ["static", "dynamic"]


def test_model_identity_sees_weights_not_dtype(calibrated) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from sparsealign.sparse.spec import model_identity

    m = AutoModelForCausalLM.from_pretrained(calibrated / "m0", dtype=torch.float32)
    a = model_identity(m)
    assert model_identity(m.to(torch.bfloat16)) == a  # same checkpoint, other dtype: same model
    with torch.no_grad():
        m.model.layers[1].mlp.down_proj.weight.mul_(1.5)  # a fine-tune changes the sampled weights
    b = model_identity(m)
    assert b["config_sha256"] == a["config_sha256"] and b["model_hash"] != a["model_hash"]


def test_mbpp_dense_vs_sparse_through_cli(cli, calibrated) -> None:
    base = ["eval", "mbpp", "--model", str(calibrated / "m0"), "--limit", "2", "--max-new-tokens", "12", "--json"]
    dense = cli(*base)
    zero = cli(*base, "--sparsity", str(calibrated / "s0"), "--mode", "static")
    half = cli(*base, "--sparsity", str(calibrated / "s50"), "--mode", "dynamic")
    for res in (dense, zero, half):
        assert res.returncode == 0, res.stderr
    d, z, h = dense.json(), zero.json(), half.json()
    assert d["sparsity"] is None and d["extract"] == "harness"
    assert z["sparsity"]["mode"] == "static" and z["sparsity"]["realized_sparsity"] < 0.05
    assert h["sparsity"] == {**h["sparsity"], "mode": "dynamic", "prefill": "dense", "target_sparsity": 0.5}
    assert abs(h["sparsity"]["realized_sparsity"] - 0.5) < 0.1
    assert h["source"] == "m0+dynamic" and d["source"] == "m0"


def test_mbpp_records_identical_dense_and_threshold_zero(calibrated) -> None:
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig
    from sparsealign.evaluate.mbpp.run import MbppRunConfig, run_mbpp

    ev = MbppEvalConfig(sampling=SamplingConfig(max_new_tokens=10))
    dense = run_mbpp(MbppRunConfig(model=str(calibrated / "m0"), limit=2, eval=ev), out_path=None)
    spec = {"artifacts": str(calibrated / "s0"), "mode": "static", "prefill": "sparse"}
    zero = run_mbpp(MbppRunConfig(model=str(calibrated / "m0"), limit=2, eval=ev, sparsity=spec))
    assert zero["sparsity"]["prefill"] == "sparse"
    assert {k: v for k, v in dense.items() if k not in ("sparsity", "source")} == \
        {k: v for k, v in zero.items() if k not in ("sparsity", "source")}


def test_preference_under_sparsity_counts_flips_against_dense(cli, calibrated) -> None:
    args = ["eval", "preference", "--model", str(calibrated / "m0"), "--method", "simpo", "--data", HH, "--limit",
            "8", "--max-length", "96", "--bootstrap", "50", "--json"]
    zero = cli(*args, "--sparsity", str(calibrated / "s0"), "--mode", "static")
    half = cli(*args, "--sparsity", str(calibrated / "s50"), "--mode", "static")
    assert zero.returncode == 0 and half.returncode == 0, zero.stderr + half.stderr
    z, h = zero.json(), half.json()
    assert z["baseline_model"] == str(calibrated / "m0")  # the dense model itself
    assert z["flip"]["flip_rate"]["estimate"] == 0 and z["flip"]["margin_shift"]["estimate"] == pytest.approx(0, abs=1e-5)
    assert h["sparsity"]["realized_sparsity"] > 0.3 and h["flip"]["margin_shift"]["estimate"] != 0
    assert z["sparsity"]["scoring"] == "all positions sparse"


def test_artifacts_refused_on_another_model(cli, calibrated) -> None:
    quiet = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # transformers' "Loading weights" bar is not ours
    res = cli("eval", "mbpp", "--model", str(calibrated / "m1"), "--sparsity", str(calibrated / "s50"), "--limit",
              "1", "--max-new-tokens", "4", env=quiet)
    assert_one_line_error(res, "calibrated on a different model", "weights differ", "sparsify calibrate")
    res = cli("sparsify", "generate", "--model", str(calibrated / "m1"), "--sparsity", str(calibrated / "s50"),
              "--prompt", "def f(", "--max-new-tokens", "2", env=quiet)
    assert_one_line_error(res, "calibrated on a different model")
    assert_one_line_error(cli("eval", "mbpp", "--solutions", "reference", "--sparsity", "x"), "--sparsity", "--model")
    assert_one_line_error(cli("sparsify", "calibrate"), "missing --model")


def test_rationales_generated_under_sparsity(cli, calibrated, tmp_path) -> None:
    out = tmp_path / "r.jsonl"
    res = cli("rationales", "generate", "--data", HH, "--out", str(out), "--source", "hf", "--model",
              str(calibrated / "m0"), "--sparsity", str(calibrated / "s50"), "--mode", "dynamic", "--limit", "2",
              "--max-new-tokens", "6", "--temperature", "1.0", "--device", "cpu", "--json")
    assert res.returncode == 0, res.stderr
    from sparsealign.data.preference import load_pairs

    got = load_pairs(out, warn=False).pairs
    assert len(got) == 2
    assert all(p.meta["rationale_source"] == f"hf:{calibrated / 'm0'}+dynamic-sparse" and p.rationale for p in got)
    assert_one_line_error(cli("rationales", "generate", "--data", HH, "--out", str(tmp_path / "x.jsonl"),
                              "--source", "openai", "--model", "m", "--sparsity", "s"), "--source hf")


def test_winrate_sparse_answers_against_dense_answers(cli, calibrated) -> None:
    from llm_server import FakeOpenAI

    args = ["eval", "winrate", "--judge", "llm", "--model", "judge", "--api-key-env", "none", "--no-cache",
            "--pairs", HH, "--limit", "4", "--responses-model", str(calibrated / "m0"), "--responses-max-new-tokens",
            "8", "--device", "cpu", "--json"]
    with FakeOpenAI() as server:
        zero = cli(*args, "--base-url", server.url, "--sparsity", str(calibrated / "s0"), "--mode", "static")
        half = cli(*args, "--base-url", server.url, "--sparsity", str(calibrated / "s50"), "--mode", "dynamic")
    assert zero.returncode == 0 and half.returncode == 0, zero.stderr + half.stderr
    z, h = zero.json(), half.json()
    # threshold 0: the sparse answers are the dense ones, and the (length-preferring) judge calls every item a tie
    assert z["sparsity"]["identical_answers"] == 4 and (z["ties"], z["n"], z["win_rate"]) == (4, 4, 0.5)
    assert h["sparsity"]["mode"] == "dynamic" and h["sparsity"]["realized_sparsity"] > 0.3
    assert h["n"] + h["missing"] == 4 and h["items"] == 4


def test_text_output_names_the_run_of_every_line(cli, calibrated) -> None:
    """Issue 23 item 6: `eval mbpp --compare-dense` says which line is the sparse run; `eval preference` under
    sparsity prints the dense baseline's metrics beside the sparse ones (it computes both)."""
    mbpp = cli("eval", "mbpp", "--model", str(calibrated / "m0"), "--limit", "2", "--max-new-tokens", "12",
               "--sparsity", str(calibrated / "s50"), "--mode", "dynamic", "--compare-dense")
    assert mbpp.returncode == 0, mbpp.stderr
    lines = mbpp.stdout.splitlines()
    assert re.match(r"sparse \(dynamic\): passed \d/2 problems", lines[0]), lines
    assert re.match(r"dense: passed \d/2$", lines[1]) and lines[2].startswith("sparse - dense: ")
    assert all(ln.startswith("sparse (dynamic): ") for ln in lines if "pass@" in ln) and any("pass@" in ln for ln in lines)

    pref = cli("eval", "preference", "--model", str(calibrated / "m0"), "--method", "simpo", "--data", HH, "--limit",
               "8", "--max-length", "96", "--bootstrap", "50", "--sparsity", str(calibrated / "s50"), "--mode", "static")
    assert pref.returncode == 0, pref.stderr
    sparse = {ln.split()[2] for ln in pref.stdout.splitlines() if ln.startswith("[sparse (static)] ")}
    dense = {ln.split()[2] for ln in pref.stdout.splitlines() if ln.startswith(f"[dense: {calibrated / 'm0'}] ")}
    assert "reward_accuracy" in sparse and sparse == dense, pref.stdout
    assert any(ln.startswith("[flip vs dense baseline] flip_rate") for ln in pref.stdout.splitlines())
