"""`eval preference` on real HH / UltraFeedback pairs with tiny random Llamas (API and the real CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import assert_one_line_error
from sparsealign.align.logps import TokenizeSettings, encode_prompt, encode_response
from sparsealign.data.preference import load_pairs
from sparsealign.errors import UserError
from sparsealign.evaluate.preference.divergence import bernoulli_js
from sparsealign.evaluate.preference.score import evaluate_preference
from sparsealign.models.loading import load_model_and_tokenizer
from sparsealign.models.tiny import build_llama, save_pretrained, tiny_model_and_tokenizer

HH = "hh-rlhf/helpful-base/test.jsonl.gz"
UF = "ultrafeedback_binarized/train_clean.jsonl"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    torch.set_num_threads(2)
    pairs = load_pairs(data_dir / HH, limit=10).pairs
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs], vocab_size=400,
                                          max_position_embeddings=1024)
    ref = build_llama(len(tok), seed=1, max_position_embeddings=1024)
    root = tmp_path_factory.mktemp("pref-models")
    save_pretrained(model, tok, root / "policy")
    save_pretrained(ref, tok, root / "ref")
    return {"pairs": pairs, "model": model, "ref": ref, "tok": tok, "root": root}


def _unbatched_logp(model, tok, pair, settings) -> float:
    """log pi(chosen | prompt) from one unpadded forward pass, independent of the batched scorer."""
    prompt = encode_prompt(tok, pair.prompt, settings, pair.messages)
    response = encode_response(tok, pair.prompt, pair.chosen, settings, pair.messages)
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    return float(logp[torch.arange(len(targets)), targets][len(prompt) - 1:].sum())


def test_dpo_metrics_are_consistent_with_logps(tiny) -> None:
    pairs, settings = tiny["pairs"], TokenizeSettings(max_length=512, max_prompt_length=256)
    summary, records = evaluate_preference(tiny["model"], tiny["tok"], pairs, "dpo", tiny["ref"], beta=0.1,
                                           settings=settings, batch_size=4, n_resamples=200)
    m = summary["metrics"]
    assert summary["n_pairs"] == len(records) == len(pairs)
    lengths = [len(encode_prompt(tiny["tok"], p.prompt, settings)) + max(
        len(encode_response(tiny["tok"], p.prompt, r, settings)) for r in (p.chosen, p.rejected)) for p in pairs]
    assert summary["n_truncated"] == sum(n > 512 for n in lengths)
    assert 0 <= m["reward_accuracy"]["estimate"] <= 1 and 0 <= m["ranking_accuracy"]["estimate"] <= 1
    assert 0 <= m["preference_divergence"]["estimate"] <= math.log(2)
    assert m["bt_cross_entropy"]["estimate"] > 0
    lw = np.array([r["logp_chosen"] for r in records])
    ll = np.array([r["logp_rejected"] for r in records])
    assert m["ranking_accuracy"]["estimate"] == pytest.approx(np.mean(lw > ll))
    assert m["reward_accuracy"]["estimate"] == pytest.approx(np.mean([r["margin"] > 0 for r in records]))
    # the batched, padded scorer agrees with a plain forward pass; the DPO reward is beta * (logp - ref logp)
    for i in [i for i, n in enumerate(lengths) if n <= 512][:2]:
        assert records[i]["logp_chosen"] == pytest.approx(_unbatched_logp(tiny["model"], tiny["tok"], pairs[i],
                                                                          settings), abs=2e-3)
        ref_lp = _unbatched_logp(tiny["ref"], tiny["tok"], pairs[i], settings)
        assert records[i]["reward_chosen"] == pytest.approx(0.1 * (records[i]["logp_chosen"] - ref_lp), abs=1e-3)


def test_policy_equal_to_reference_gives_no_preference(tiny) -> None:
    summary, _ = evaluate_preference(tiny["model"], tiny["tok"], tiny["pairs"][:6], "rdpo", tiny["model"],
                                     n_resamples=50)
    m = summary["metrics"]
    assert m["mean_margin"]["estimate"] == 0.0 and m["reward_accuracy"]["estimate"] == 0.0
    assert m["preference_divergence"]["estimate"] == pytest.approx(float(bernoulli_js(1.0, 0.5)))
    assert m["bt_cross_entropy"]["estimate"] == pytest.approx(math.log(2))


def test_scored_pairs_use_soft_human_probabilities(tiny, data_dir) -> None:
    pairs = load_pairs(data_dir / UF, limit=6).pairs
    summary, records = evaluate_preference(tiny["model"], tiny["tok"], pairs, "simpo", n_resamples=50, tau=2.0)
    expected = [1 / (1 + math.exp(-(p.score_chosen - p.score_rejected) / 2.0)) for p in pairs]
    assert [r["human_prob"] for r in records] == pytest.approx(expected)
    assert summary["scored_pairs"] == sum(e < 1 for e in expected) > 0
    assert summary["metrics"]["mean_human_prob"]["estimate"] < 1
    # SimPO reward beta/|y| * log pi; ORPO reward is the log odds of the length-normalised likelihood
    assert records[0]["reward_chosen"] == pytest.approx(2.0 * records[0]["logp_chosen"] / records[0]["n_chosen"])
    _, orpo = evaluate_preference(tiny["model"], tiny["tok"], pairs[:2], "rorpo", n_resamples=0)
    a = orpo[0]["logp_rejected"] / orpo[0]["n_rejected"]
    assert orpo[0]["reward_rejected"] == pytest.approx(a - math.log(1 - math.exp(a)), rel=1e-5)


def test_cli_identical_baseline_never_flips_and_reports_kl(tiny, cli) -> None:
    root = tiny["root"]
    res = cli("eval", "preference", "--model", str(root / "policy"), "--ref-model", str(root / "ref"),
              "--baseline-model", str(root / "policy"), "--method", "simpo", "--data", HH, "--limit", "6",
              "--kl-samples", "3", "--kl-max-new-tokens", "8", "--max-length", "256", "--bootstrap", "100",
              "--name", "pref", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["flip"]["flip_rate"]["estimate"] == 0.0 and out["flip"]["flip_divergence"]["estimate"] == 0.0
    assert out["kl"]["n"] == 3 and math.isfinite(out["kl"]["estimate"])
    assert out["n_pairs"] == 6 and out["beta"] == 2.0
    summary = json.loads((Path(out["records"]).parent / "summary.json").read_text())
    assert summary["metrics"] == out["metrics"] and len(pd.read_parquet(out["records"])) == 6


def test_dpo_without_reference_and_missing_model_are_one_line_errors(tiny, cli) -> None:
    res = cli("eval", "preference", "--model", str(tiny["root"] / "policy"), "--method", "dpo", "--data", HH)
    assert_one_line_error(res, "--ref-model")
    with pytest.raises(UserError, match="model not found"):
        load_model_and_tokenizer(str(tiny["root"] / "missing"))
