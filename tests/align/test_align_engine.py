"""End-to-end alignment runs on a tiny local Llama and real HH pairs: learning, reference handling, LoRA, resume,
the real CLI (bad input, --json, skip when done) and 2-process `accelerate launch` against 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from sparsealign.align.config import AlignConfig
from sparsealign.align.engine import run_align
from sparsealign.data.preference import load_pairs
from sparsealign.errors import UserError
from sparsealign.ledger import Ledger
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer
from sparsealign.rundir import RunDir

torch.set_num_threads(2)
HH = "hh-rlhf/helpful-base/test.jsonl.gz"
REPO = Path(__file__).resolve().parents[2]
SMALL = {"batch_size": 4, "max_length": 48, "max_prompt_length": 16, "logging_steps": 1, "save_steps": 1000,
         "lr": 1e-3, "eval_batch_size": 16}


@pytest.fixture(scope="module")
def hh(data_dir):
    return (load_pairs(data_dir / HH, split="train", warn=False).pairs,
            load_pairs(data_dir / HH, split="eval", warn=False).pairs)


@pytest.fixture(scope="module")
def model_dir(hh, tmp_path_factory):
    texts = [p.prompt + p.chosen + p.rejected for p in hh[0][:300]]
    model, tok = tiny_model_and_tokenizer(texts, vocab_size=384, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    return save_pretrained(model, tok, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEALIGN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def align(tmp_path, name, pairs, eval_pairs=None, callbacks=(), **fields):
    cfg = AlignConfig(**{"data": HH, **SMALL, **fields})
    run = RunDir.open(name, "align", cfg, runs_root=tmp_path / "runs")
    return run_align(cfg, run, pairs=pairs, eval_pairs=eval_pairs, callbacks=callbacks), run


def losses(run, cell):
    return [e["loss"] for e in run.ledger.events("align", cell) if "loss" in e]


def with_rationales(pairs):
    from dataclasses import replace

    return [replace(p, rationale="The first answer stays on topic and is more helpful.") for p in pairs]


@pytest.mark.slow
def test_dpo_raises_heldout_reward_accuracy_on_hh(tmp_path, model_dir, hh):
    # Helpful-base prefers the longer answer 59% of the time; with room for responses to end inside max_length, DPO
    # on 128 pairs learns a signal (e.g. later end-of-sequence) that carries over to 100 held-out pairs.
    train, held_out = hh
    metrics, run = align(tmp_path, "learn", train[:128], held_out[:100], method="dpo", model=str(model_dir),
                         epochs=3, batch_size=16, max_length=128, max_prompt_length=16, logging_steps=4)
    assert metrics["eval_start_rewards/accuracies"] == 0.5  # policy == reference: every reward is 0, ties
    assert metrics["eval_rewards/accuracies"] > 0.53
    assert metrics["eval_rewards/margins"] > 0
    assert metrics["train_loss"] < 0.69
    events = run.ledger.events("align", "dpo")
    assert {"rewards/margins", "logps/chosen", "tokens_per_s"} <= set(events[1])
    assert (Path(run.root) / "align/dpo/model/model.safetensors").exists()
    assert json.loads((Path(run.root) / "align/dpo/metrics.json").read_text())["n_train_pairs"] == 128


def test_reference_free_methods_never_load_a_reference(tmp_path, model_dir, hh, private_cache):
    pairs = with_rationales(hh[0][:8])
    for method in ("orpo", "simpo", "rorpo", "rsimpo"):  # a reference that does not exist is never touched
        metrics, run = align(tmp_path, f"free-{method}", pairs, method=method, model=str(model_dir),
                             ref_model="/nonexistent/reference", max_steps=2)
        assert metrics["train_loss"] > 0 and metrics["ref_cache_hits"] == 0
        if method.startswith("r"):
            assert all(e["rationale_nll"] > 0 for e in run.ledger.events("align", method) if "loss" in e)
    assert not (private_cache / "ref_logps").exists()
    with pytest.raises(UserError, match="nonexistent"):  # the one loader names the missing model
        align(tmp_path, "needs-ref", pairs, method="dpo", model=str(model_dir), ref_model="/nonexistent/reference",
              max_steps=1)


def test_reference_logps_are_cached_and_reused(tmp_path, model_dir, hh, private_cache):
    first, _ = align(tmp_path, "cache", with_rationales(hh[0][:8]), with_rationales(hh[1][:8]), method="rdpo",
                     model=str(model_dir), max_steps=1, cell="a")
    second, _ = align(tmp_path, "cache2", with_rationales(hh[0][:8]), with_rationales(hh[1][:8]), method="rdpo",
                      model=str(model_dir), max_steps=1, cell="b")
    assert first["ref_cache_hits"] == 0 and second["ref_cache_hits"] == 2  # train and eval sets
    assert len(list((private_cache / "ref_logps").glob("*.safetensors"))) == 2
    assert second["eval_rewards/margins"] == pytest.approx(first["eval_rewards/margins"], abs=1e-6)


def test_packed_reference_pass_gives_the_loader_pass_log_probs(tmp_path, model_dir, hh):
    # training pairs take the packed pass (prompt once for both responses); held-out pairs the loader's batches
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from sparsealign.align.engine import tokenize_settings
    from sparsealign.align.logps import PairCollator, encode_pairs
    from sparsealign.align.losses import LossParams
    from sparsealign.align.trainer import AlignTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    feats, _ = encode_pairs(tok, with_rationales(hh[0][:12]), tokenize_settings(AlignConfig(model=str(model_dir),
                                                                                           data=HH, **SMALL)),
                            rationale=True)
    trainer = AlignTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir),
                           args=TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=3,
                                                  report_to=[]),
                           data_collator=PairCollator(tok.pad_token_id), loss_params=LossParams("dpo", beta=0.1))
    packed, loader = trainer.reference_pass(feats, packed=True), trainer.reference_pass(feats)
    assert packed.shape == loader.shape == (12, 2)
    assert packed == pytest.approx(loader, abs=1e-4)
    assert packed[:, 0].tolist() != packed[:, 1].tolist()  # chosen and rejected really are different sequences


def test_separate_reference_model_gives_the_dpo_rewards_of_its_log_probs(tmp_path, model_dir, hh):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsealign.align.engine import tokenize_settings
    from sparsealign.align.logps import score_pairs

    tok = AutoTokenizer.from_pretrained(model_dir)
    policy, ref = AutoModelForCausalLM.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_pretrained(ref, tok, tmp_path / "ref")
    held_out = hh[1][:8]
    metrics, _ = align(tmp_path, "ref", hh[0][:8], held_out, method="dpo", model=str(model_dir),
                       ref_model=str(tmp_path / "ref"), max_steps=1, beta=0.5)
    cfg = AlignConfig(model=str(model_dir), data=HH, **SMALL)
    pol, rf = score_pairs(policy, tok, held_out, tokenize_settings(cfg)), score_pairs(ref, tok, held_out,
                                                                                     tokenize_settings(cfg))
    margins = 0.5 * ((pol["chosen_logps"] - rf["chosen_logps"]) - (pol["rejected_logps"] - rf["rejected_logps"]))
    assert metrics["eval_start_rewards/margins"] == pytest.approx(margins.mean().item(), abs=1e-4)
    assert abs(metrics["eval_start_rewards/margins"]) > 1e-3  # the reference really is the other model


def test_lora_run_trains_adapters_and_writes_a_merged_model(tmp_path, model_dir, hh, recwarn):
    from transformers import AutoModelForCausalLM

    metrics, run = align(tmp_path, "lora", hh[0][:8], method="orpo", model=str(model_dir), max_steps=3, lr=1e-2,
                         lora={"r": 4, "alpha": 8, "dropout": 0.0}, gradient_checkpointing=True)
    # peft's read of transformers' deprecated alias is not shown to users
    assert not [w for w in recwarn if "is_gradient_checkpointing" in str(w.message)]
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    merged = AutoModelForCausalLM.from_pretrained(Path(run.root) / "align/orpo/model")
    b, m = base.state_dict(), merged.state_dict()
    assert set(b) == set(m)  # a plain model: adapters merged, no lora_ keys
    assert torch.equal(b["model.embed_tokens.weight"], m["model.embed_tokens.weight"])  # frozen base weights
    assert not torch.equal(b["model.layers.0.self_attn.q_proj.weight"], m["model.layers.0.self_attn.q_proj.weight"])
    assert metrics["train_loss"] > 0


class Crash(Exception):
    pass


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, model_dir, hh):
    from transformers import TrainerCallback

    class CrashAfterCheckpoint(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Crash("simulated kill after checkpoint-2")

    common = {"method": "dpo", "model": str(model_dir), "max_steps": 4, "save_steps": 2, "batch_size": 2}
    held_out = hh[1][:4]
    full, full_run = align(tmp_path, "straight", hh[0][:8], held_out, **common)
    with pytest.raises(Crash):
        align(tmp_path, "resumed", hh[0][:8], held_out, callbacks=[CrashAfterCheckpoint()], **common)
    resumed, resumed_run = align(tmp_path, "resumed", hh[0][:8], held_out, **common)
    assert resumed["resumed_from"] == "checkpoint-2"
    assert resumed_run.ledger.get("align", "dpo").attempts == 2
    assert losses(resumed_run, "dpo") == pytest.approx(losses(full_run, "dpo"), abs=1e-6)
    for key in ("eval_start_loss", "eval_loss", "eval_rewards/margins"):  # start metrics come from attempt 1
        assert resumed[key] == pytest.approx(full[key], abs=1e-6)
    assert len(losses(full_run, "dpo")) == 4
    from safetensors.torch import load_file

    w_full = load_file(Path(full_run.root) / "align/dpo/model/model.safetensors")
    w_res = load_file(Path(resumed_run.root) / "align/dpo/model/model.safetensors")
    assert all(torch.allclose(w_full[k], w_res[k], atol=1e-6) for k in w_full)
    again, _ = align(tmp_path, "resumed", hh[0][:8], held_out, **common)  # finished: the ledger answers, nothing reruns
    assert again == resumed


@pytest.mark.slow
def test_cli_rationale_method_without_rationales_is_a_one_line_error(cli, model_dir):
    res = cli("align", "--method", "rdpo", "--model", str(model_dir), "--data", HH)
    assert_one_line_error(res, "rdpo", "sparsealign rationales generate", HH)


@pytest.mark.slow
def test_cli_report_to_tracker(cli, model_dir, tmp_path):
    import importlib.util

    args = ("align", "--method", "orpo", "--model", str(model_dir), "--data", HH, "--set", "max_pairs=4",
            "--set", "max_steps=1", "--set", "max_length=48", "--set", "max_prompt_length=16",
            "--set", "report_to=[tensorboard]", "--json")
    res = cli(*args)
    if importlib.util.find_spec("tensorboard") is None:  # the test extra does not install it
        assert_one_line_error(res, "report_to: tensorboard is not installed", "pip install")
    else:
        assert res.returncode == 0, res.stderr
        assert list((Path(res.json()["run_dir"]) / "align/orpo/checkpoints").rglob("events.out.tfevents*"))


@pytest.mark.slow
def test_cli_json_run_then_skip(cli, model_dir, tmp_path):
    args = ("align", "--method", "simpo", "--model", str(model_dir), "--data", HH, "--name", "cli",
            "--set", "max_pairs=8", "--set", "max_steps=2", "--set", "max_length=48", "--set", "max_prompt_length=16",
            "--json")
    res = cli(*args, env={"SPARSEALIGN_CACHE_DIR": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["method"] == "simpo" and out["beta"] == 2.0 and out["train_loss"] > 0
    assert (Path(out["model_dir"]) / "model.safetensors").exists()
    assert (Path(out["model_dir"]) / "tokenizer.json").exists()
    again = cli(*args)
    assert again.returncode == 0 and again.json() == out  # done cell: metrics from the ledger
    bad = cli(*args[:-1], "--set", "beta=0.5")
    assert_one_line_error(bad, "different align config", "beta")


@pytest.mark.slow
def test_two_process_accelerate_launch_matches_one_process(tmp_path, model_dir, data_dir):
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_RUNS_DIR": str(tmp_path / "runs"),
           "SPARSEALIGN_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    common = ["align", "--method", "dpo", "--model", str(model_dir), "--data", HH, "--set", "max_pairs=16",
              "--set", "logging_steps=1", "--set", "max_length=48", "--set", "max_prompt_length=16",
              "--set", "lr=1e-3", "--json"]
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
              str(REPO / "configs/accelerate/cpu.yaml"), "--num_processes", "2", "-m", "sparsealign.cli"]
    two = subprocess.run([*launch, *common, "--name", "two", "--set", "batch_size=2"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "sparsealign.cli", *common, "--name", "one", "--set", "batch_size=4"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    traj = {name: [e["loss"] for e in Ledger(tmp_path / "runs" / name / "ledger.sqlite").events("align", "dpo")
                   if "loss" in e] for name in ("one", "two")}
    assert len(traj["one"]) == 4  # 16 pairs / global batch 4
    assert traj["two"] == pytest.approx(traj["one"], abs=1e-5)
    one_m, two_m = json.loads(one.stdout), json.loads(two.stdout)  # one JSON object each, printed by rank 0 only
    assert (one_m["world_size"], two_m["world_size"]) == (1, 2)
    assert (two_m["ref_cache_hits"], one_m["ref_cache_hits"]) == (0, 1)  # the 2-process reference pass is reused
