"""Rationale methods on partly-rationalised data (the study's HH pairs + execution-feedback code pairs)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sparsealign.align.config import AlignConfig
from sparsealign.align.engine import run_align
from sparsealign.align.inputs import check_rationales
from sparsealign.align.logps import TokenizeSettings, encode_pairs, sequence_logps
from sparsealign.align.losses import LossParams, preference_loss
from sparsealign.data.preference import load_pairs
from sparsealign.errors import UserError
from sparsealign.models.tiny import tiny_model_and_tokenizer
from sparsealign.rundir import RunDir

HH = "hh-rlhf/helpful-base/test.jsonl.gz"


@pytest.fixture(scope="module")
def mixed(data_dir):
    pairs = load_pairs(data_dir / HH, warn=False).pairs[:16]
    return [replace(p, rationale="It answers the question that was asked.") if i % 2 else p
            for i, p in enumerate(pairs)]


def test_missing_rationales_error_by_default_and_skip_allows_partial(mixed):
    with pytest.raises(UserError, match="rationales generate"):
        check_rationales(AlignConfig(method="rdpo", model="m", data=HH), mixed, HH)
    check_rationales(AlignConfig(method="rdpo", model="m", data=HH, missing_rationales="skip"), mixed, HH)
    none = [replace(p, rationale=None) for p in mixed]
    with pytest.raises(UserError, match="rationales generate"):  # skip still needs at least one rationale
        check_rationales(AlignConfig(method="rdpo", model="m", data=HH, missing_rationales="skip"), none, HH)


def test_pairs_without_rationale_add_nothing_to_the_loss(mixed):
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen for p in mixed], vocab_size=300, hidden_size=32,
                                          num_layers=1, num_heads=2)
    feats, _ = encode_pairs(tok, mixed, TokenizeSettings(max_length=64, max_prompt_length=24), rationale=True)
    assert all((f["rationale_ids"] == []) == (p.rationale is None) for f, p in zip(feats, mixed, strict=True))
    ids = torch.tensor([f["rationale_context_ids"] + f["rationale_ids"] for f in feats[:1]])  # pair 0: no rationale
    logp_r, n_r = sequence_logps(model, ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert n_r.tolist() == [0] and logp_r.tolist() == [0.0]
    w, lw = torch.tensor([-5.0, -6.0]), torch.tensor([-7.0, -6.5])
    n = torch.tensor([5, 6])
    args = (w, n, lw, n, torch.tensor([-5.5, -6.2]), torch.tensor([-6.8, -6.4]))
    base = preference_loss(LossParams("dpo"), *args)["loss"]
    with_r = preference_loss(LossParams("rdpo"), *args, logp_r=torch.tensor([0.0, -4.0]), n_r=torch.tensor([0, 2]))
    assert torch.allclose(with_r["loss"][0], base[0]) and torch.allclose(with_r["loss"][1], base[1] + 2.0)


def test_rdpo_trains_on_mixed_pairs_with_skip(tmp_path, mixed, monkeypatch):
    monkeypatch.setenv("SPARSEALIGN_CACHE_DIR", str(tmp_path / "cache"))
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen for p in mixed], vocab_size=300, hidden_size=32,
                                          num_layers=1, num_heads=2)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    cfg = AlignConfig(method="rdpo", model=str(tmp_path / "m"), data=HH, missing_rationales="skip", max_steps=2,
                      batch_size=4, max_length=64, max_prompt_length=24, logging_steps=1, save_steps=1000)
    run = RunDir.open("mixed", "align", cfg, runs_root=tmp_path / "runs")
    metrics = run_align(cfg, run, pairs=mixed, eval_pairs=[])
    assert metrics["n_train_pairs"] == len(mixed)
    assert (run.root / "align" / "rdpo" / "model" / "model.safetensors").exists()
