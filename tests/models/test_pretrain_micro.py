"""The micro family recipe on a reduced grid: real corpus, real training, reproducibility, cache reuse, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sparsealign.data.records import mbpp_split_of
from sparsealign.models import pretrain
from sparsealign.models.loading import LoadSettings, load_model
from sparsealign.models.micro import PRESETS, get_recipe, non_embedding_params
from sparsealign.models.pretrain_cli import PRESET_NAMES

SMALL_CORPUS = ["stdlib_bytes=60000", "generated_train_tasks=150", "vocab_size=384", "seq_len=64", "batch_size=4",
                "num_threads=1"]  # 1 thread: 2-thread OpenMP stalls on busy shared CI cores


def reduced(seed: int = 0, steps: int = 6):
    return get_recipe("micro", sizes=["micro-xs"], steps=steps, seed=seed, overrides=SMALL_CORPUS)


@pytest.mark.slow
def test_micro_preset_has_four_sizes_spanning_a_hundred_x_with_relu():
    from sparsealign.models.tiny import build_llama

    assert sorted(PRESET_NAMES) == sorted(PRESETS)
    counts = [non_embedding_params(spec) for spec in PRESETS["micro"].sizes]
    # >= 4 points for a scaling slope with t(n-2) intervals (issue 9), spaced >= 3.5x apart
    assert len(counts) >= 4 and all(b >= 3.5 * a for a, b in zip(counts, counts[1:], strict=False))
    assert counts[-1] >= 100 * counts[0]
    spec = PRESETS["micro"].sizes[0]  # the formula is the real model's count (checked on the cheapest size)
    model = build_llama(512, hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
                        intermediate_size=spec.intermediate_size, hidden_act="relu")
    assert model.config.hidden_act == "relu"
    assert pretrain.param_counts(model) == (non_embedding_params(spec) + 512 * spec.hidden_size,
                                            non_embedding_params(spec))


def test_corpus_has_no_mbpp_test_split(data_dir):
    docs = pretrain.mbpp_documents(["train", "validation", "prompt"])
    rows = [json.loads(line) for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]
    assert len(docs) == sum(mbpp_split_of(r["task_id"]) != "test" for r in rows) == 474
    test_asserts = {r["test_list"][0] for r in rows if mbpp_split_of(r["task_id"]) == "test"}
    assert not any(a in d for d in docs for a in test_asserts)


def test_same_seed_same_weights_and_cache_reuse(tmp_path):
    a = pretrain.ensure_family(reduced(), root=tmp_path / "a", eval_generated=False, log=lambda m: None)
    b = pretrain.ensure_family(reduced(), root=tmp_path / "b", eval_generated=False, log=lambda m: None)
    ma, mb = a.members[0], b.members[0]
    assert a.key == b.key and not ma.cached and not mb.cached
    assert ma.metrics["loss_curve"] == mb.metrics["loss_curve"]
    assert ma.metrics["train_loss_final"] < ma.metrics["train_loss_first"]  # it learns
    wa, wb = (load_model(m.path, LoadSettings())[0].state_dict() for m in (ma, mb))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the second call on the same root reuses the checkpoint; another seed is another family
    again = pretrain.ensure_family(reduced(), root=tmp_path / "a", eval_generated=False, log=lambda m: None)
    assert again.members[0].cached and again.members[0].metrics == ma.metrics
    model, tok = load_model(ma.path, LoadSettings())
    assert model.config.hidden_act == "relu" and tok.eos_token_id == 2
    assert json.loads((tmp_path / "a" / "micro-xs" / "pretrain.json").read_text())["params"] == ma.params
    # another seed into the same directory is another recipe: retrained, never reused
    other = pretrain.ensure_family(reduced(seed=1), root=tmp_path / "a", eval_generated=False, log=lambda m: None)
    assert other.key != a.key and not other.members[0].cached
    assert other.members[0].metrics["loss_curve"] != ma.metrics["loss_curve"]


@pytest.mark.slow
def test_parallel_workers_give_the_same_weights(tmp_path):
    two = get_recipe("micro", sizes=["micro-xs", "micro-s"], steps=3, overrides=SMALL_CORPUS)
    seq = pretrain.ensure_family(two, root=tmp_path / "seq", workers=1, eval_generated=False, log=lambda m: None)
    par = pretrain.ensure_family(two, root=tmp_path / "par", workers=2, eval_generated=False, log=lambda m: None)
    for a, b in zip(seq.members, par.members, strict=True):
        assert a.name == b.name and a.metrics["loss_curve"] == b.metrics["loss_curve"]
        assert (Path(a.path) / "model.safetensors").read_bytes() == (Path(b.path) / "model.safetensors").read_bytes()


def test_lr_schedule_formula():
    r = get_recipe("micro", steps=100)
    r.warmup_steps, r.min_lr_ratio = 10, 0.1
    assert pretrain.lr_at(0, r) == pytest.approx(0.1)
    assert pretrain.lr_at(9, r) == pytest.approx(1.0)
    assert pretrain.lr_at(10, r) == pytest.approx(1.0)
    assert pretrain.lr_at(55, r) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert pretrain.lr_at(100, r) == pytest.approx(0.1)


@pytest.mark.slow
def test_cli_pretrain_json_and_errors(cli, tmp_path):
    sets = [arg for kv in SMALL_CORPUS for arg in ("--set", kv)]
    res = cli("pretrain", "--preset", "micro", "--sizes", "micro-xs", "--steps", "2", *sets,
              "--out", str(tmp_path / "fam"), "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    (member,) = out["members"]
    assert member["name"] == "micro-xs" and member["params"] > member["non_embedding_params"] > 0
    assert 0.0 <= member["metrics"]["generated_pass@1"] <= 1.0 and member["metrics"]["vocab_size"] == 384
    assert (tmp_path / "fam" / "micro-xs" / "model.safetensors").exists()
    from conftest import assert_one_line_error

    assert_one_line_error(cli("pretrain", "--sizes", "micro-xl"), "micro-xl", "micro-xs")
    assert_one_line_error(cli("pretrain", "--steps", "0"), "--steps")
    assert_one_line_error(cli("pretrain", "--set", "lr=fast"), "lr")
