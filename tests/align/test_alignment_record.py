"""What a trained model needs for its evaluation travels with it: run_align writes sparsealign_alignment.json
beside the model, and the preference evaluator scores with the β and reference read from it."""

from __future__ import annotations

import json

import pytest
import torch

from sparsealign.align.config import AlignConfig
from sparsealign.align.engine import run_align
from sparsealign.align.sidecar import FILENAME, read_record
from sparsealign.data.preference import load_pairs
from sparsealign.errors import UserError
from sparsealign.evaluate.preference.run import PreferenceRunConfig, run_preference
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer
from sparsealign.rundir import RunDir

HH = "hh-rlhf/helpful-base/test.jsonl.gz"
SMALL = {"batch_size": 4, "max_length": 48, "max_prompt_length": 16, "logging_steps": 1, "save_steps": 1000,
         "lr": 1e-3, "max_steps": 2}


@pytest.fixture(scope="module")
def pairs(data_dir):
    return load_pairs(data_dir / HH, split="train", warn=False).pairs[:8]


@pytest.fixture(scope="module")
def base_dir(pairs, tmp_path_factory):
    torch.set_num_threads(1)
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs], vocab_size=300,
                                          hidden_size=16, num_layers=1, num_heads=2, seed=0)
    return save_pretrained(model, tok, tmp_path_factory.mktemp("tiny") / "base")


def aligned(tmp_path, base_dir, pairs, **fields):
    cfg = AlignConfig(**{"data": HH, "model": str(base_dir), **SMALL, **fields})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSEALIGN_CACHE_DIR", str(tmp_path / "cache"))
        run = RunDir.open("r", "align", cfg, runs_root=tmp_path / "runs")
        try:
            run_align(cfg, run, pairs=pairs, eval_pairs=[])
        finally:
            run.close()
    return run.root / "align" / cfg.cell_name / "model"


@pytest.fixture(scope="module")
def dpo_model(base_dir, pairs, tmp_path_factory):
    return aligned(tmp_path_factory.mktemp("dpo"), base_dir, pairs, method="dpo", beta=0.2)


def test_non_default_beta_reaches_the_preference_evaluator(tmp_path, base_dir, dpo_model):
    model = dpo_model
    record = read_record(model)
    assert record is not None and record.method == "dpo" and record.beta == 0.2
    assert record.reference == str(base_dir) and record.rationale == "none"
    # neither --beta nor --ref-model given: both come from the record
    common = {"model": str(model), "method": "dpo", "data": HH, "limit": 6, "max_length": 48, "n_resamples": 0}
    from_record = run_preference(PreferenceRunConfig(**common), out_path=str(tmp_path / "a.jsonl"))
    assert from_record["beta"] == 0.2 and from_record["ref_model"] == str(base_dir)
    explicit = run_preference(PreferenceRunConfig(**common, beta=0.1), out_path=str(tmp_path / "b.jsonl"))
    assert explicit["beta"] == 0.1
    # the reward is linear in β: margins scored with the record's 0.2 are twice those at 0.1
    a = [json.loads(x)["margin"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(x)["margin"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert any(abs(m) > 0 for m in b) and a == pytest.approx([2 * m for m in b], rel=1e-6)


@pytest.mark.slow
def test_the_eval_verb_reads_beta_and_reference_from_the_record(cli, base_dir, dpo_model):
    res = cli("eval", "preference", "--model", str(dpo_model), "--method", "dpo", "--data", HH, "--limit", "4",
              "--max-length", "48", "--bootstrap", "0", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["beta"] == 0.2 and out["ref_model"] == str(base_dir) and out["n_pairs"] == 4


def test_reference_free_methods_record_their_own_beta_and_no_reference(tmp_path, base_dir, pairs):
    model = aligned(tmp_path, base_dir, pairs, method="simpo")
    record = read_record(model)
    assert record.beta == 2.0 and record.reference is None  # SimPO's own default β, no reference model
    out = run_preference(PreferenceRunConfig(model=str(model), method="simpo", data=HH, limit=4, max_length=48,
                                             n_resamples=0))
    assert out["beta"] == 2.0 and out["ref_model"] is None


def test_a_damaged_record_is_a_one_line_error_naming_the_field(tmp_path, base_dir):
    bad = tmp_path / "m"
    bad.mkdir()
    (bad / FILENAME).write_text(json.dumps({"method": "dpo", "beta": "high"}))
    with pytest.raises(UserError, match=f"{FILENAME}: field 'beta'"):
        read_record(bad)
    assert read_record(base_dir) is None  # a model this toolkit did not align: no record, nothing assumed
