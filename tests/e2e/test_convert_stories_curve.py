"""Sparsity on real pretrained weights: the converted stories260K (SwiGLU), KL / agreement vs sparsity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from sparsealign.models.llama2c import convert
from sparsealign.sparse.bench.curve import sample_texts, sparsity_curve

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]




@pytest.fixture(scope="module")
def stories(data_dir: Path, tmp_path_factory) -> Path:
    root = data_dir / "models" / "stories260K"
    out = tmp_path_factory.mktemp("curve") / "stories260K"
    convert(root / "stories260K.bin", root / "tok512.bin", out)
    return out


@pytest.fixture(scope="module")
def model_tok(stories):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(stories).eval(), AutoTokenizer.from_pretrained(stories)


def test_sampled_heldout_text_is_stories_and_disjoint(model_tok):
    model, tok = model_tok
    calib = sample_texts(model, tok, 4, new_tokens=48, seed=0)
    held = sample_texts(model, tok, 4, new_tokens=48, seed=1)
    assert calib == sample_texts(model, tok, 4, new_tokens=48, seed=0)  # reproducible
    assert not set(calib) & set(held)
    assert all(t.startswith(("Once upon a time", "One day", "Lily and Tom", "There was a little")) for t in held)
    words = " ".join(held).split()
    assert len(words) > 100 and sum(w.strip('.,!?"').isalpha() for w in words) / len(words) > 0.8


def test_kl_and_agreement_versus_sparsity(model_tok):
    model, tok = model_tok
    calib = sample_texts(model, tok, 12, new_tokens=64, seed=0)
    held = sample_texts(model, tok, 6, new_tokens=64, seed=1)
    originals = [layer.mlp for layer in model.model.layers]
    result = sparsity_curve(model, tok, calib, held, [0.0, 0.3, 0.6, 0.9], ("static", "dynamic"))
    assert [layer.mlp for layer in model.model.layers] == originals  # every application was removed
    for mode in ("static", "dynamic"):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        assert [r["sparsity"] for r in rows] == [0.0, 0.3, 0.6, 0.9]
        assert rows[0]["kl_mean"] < 1e-8 and rows[0]["top1_agreement"] == 1.0
        kls = [r["kl_mean"] for r in rows]
        assert all(a < b for a, b in zip(kls, kls[1:], strict=False)), (mode, kls)
        agree = [r["top1_agreement"] for r in rows]
        assert agree[-1] < agree[1] < 1.0, (mode, agree)
        # held-out text from the calibration distribution: realized sparsity near the target
        for r in rows:
            assert abs(r["realized_sparsity"] - r["sparsity"]) < 0.03, (mode, r)


def test_curve_cli_writes_json_csv_png(cli, stories, tmp_path):
    res = cli("sparsify", "curve", "--model", str(stories), "--sparsity", "0,0.5", "--calib-texts", "4",
              "--eval-texts", "2", "--new-tokens", "32", "--out", "curve", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert [(r["mode"], r["sparsity"]) for r in out["rows"]] == [
        ("static", 0.0), ("dynamic", 0.0), ("static", 0.5), ("dynamic", 0.5)]
    for name in ("curve.json", "curve.csv", "curve.png", "texts.json"):
        assert (tmp_path / "curve" / name).stat().st_size > 0
    assert json.loads((tmp_path / "curve" / "curve.json").read_text())["rows"] == out["rows"]
    assert (tmp_path / "curve" / "curve.csv").read_text().splitlines()[0].startswith("eval_domain,calib_domain,")

    assert_one_line_error(cli("sparsify", "curve", "--model", str(tmp_path), "--json"), "config.json")
    assert_one_line_error(cli("sparsify", "curve", "--model", str(stories), "--sparsity", "0.5,1.5"), "--sparsity")
    assert_one_line_error(cli("sparsify", "curve", "--model", str(stories), "--modes", "static,fast"), "fast")
    assert_one_line_error(cli("sparsify", "curve", "--model", str(stories), "--variants", "ffn_input+mlp"), "mlp")
    assert_one_line_error(cli("sparsify", "curve", "--model", str(stories), "--domains", "mbpp,wiki"), "--domains")


ROW_KEYS = {"eval_domain": str, "calib_domain": str, "sites": str, "mode": str, "sparsity": float,
            "realized_sparsity": float, "site_sparsity": dict, "kl_mean": float, "kl_ci_low": float,
            "kl_ci_high": float, "kl_p95": float, "top1_agreement": float, "top1_ci_low": float,
            "top1_ci_high": float, "flops_skipped": float, "tokens": int, "layer_sparsity": list}


def test_cross_domain_curve_json_schema(cli, stories, tmp_path):
    """`--domains mbpp,hh`: each domain evaluated with the other's calibration, CATS and TEAL variants, with CIs."""
    res = cli("sparsify", "curve", "--model", str(stories), "--domains", "mbpp,hh", "--sparsity", "0,0.6",
              "--variants", "intermediate,ffn_input+intermediate", "--calib-texts", "3", "--eval-texts", "2",
              "--max-length", "64", "--out", "curve", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert [(r["eval_domain"], r["calib_domain"]) for r in out["runs"]] == [("mbpp", "hh"), ("hh", "mbpp")]
    assert len(out["rows"]) == 2 * 2 * 2 * 2
    for row in out["rows"]:
        assert set(row) == set(ROW_KEYS), set(row) ^ set(ROW_KEYS)
        for key, typ in ROW_KEYS.items():
            assert isinstance(row[key], typ) or (typ is float and isinstance(row[key], int)), (key, row[key])
        assert set(row["site_sparsity"]) == set(row["sites"].split("+"))
        assert row["kl_ci_low"] <= row["kl_mean"] <= row["kl_ci_high"]
        assert row["top1_ci_low"] <= row["top1_agreement"] <= row["top1_ci_high"]
        if row["sparsity"] == 0:
            assert row["kl_mean"] < 1e-9 and row["top1_agreement"] == 1.0 and row["realized_sparsity"] < 0.01
        else:
            assert row["kl_mean"] > 0 and abs(row["realized_sparsity"] - 0.6) < 0.15, row
            assert row["flops_skipped"] > (0.5 if "ffn_input" in row["sites"] else 0.3)
