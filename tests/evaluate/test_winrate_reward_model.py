"""Reward-model judge: Bradley-Terry training of a tiny Llama reward model on real HH pairs, and its win rate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sparsealign.cli import main
from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.evaluate.judges.reward_model import bt_loss

HH = "hh-rlhf/helpful-base/test.jsonl.gz"


def test_bt_loss_matches_formula():
    r_w = torch.tensor([1.0, -0.5, 2.0, 0.0])
    r_l = torch.tensor([0.0, 0.5, -1.0, 0.0])
    margins = [w - r for w, r in zip(r_w.tolist(), r_l.tolist(), strict=True)]
    expected = -sum(math.log(1 / (1 + math.exp(-m))) for m in margins) / 4
    assert bt_loss(r_w, r_l).item() == pytest.approx(expected, rel=1e-6)
    r_w.requires_grad_(True)
    bt_loss(r_w, r_l).backward()
    # d/dr_w of -log sigma(r_w - r_l) / n = -(1 - sigma(r_w - r_l)) / n
    assert r_w.grad.tolist() == pytest.approx([-(1 - 1 / (1 + math.exp(-m))) / 4 for m in margins], rel=1e-5)


def _run(capsys, *args: str) -> dict:
    """The CLI in-process (saves two torch imports over a subprocess); returns its --json object."""
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_train_reward_model_raises_pair_accuracy_and_judges(tmp_path: Path, data_dir: Path, capsys):
    # short pairs keep the tiny model fast; the training pairs are real HH pairs
    pairs = [p for p in load_pairs(HH, limit=400).pairs if len(p.prompt + p.chosen + p.rejected) < 600][:24]
    data = write_pairs_jsonl(pairs, tmp_path / "train.jsonl")
    out = tmp_path / "rm"
    metrics = _run(capsys, "eval", "train-reward-model", "--data", str(data), "--out", str(out), "--base-model",
                   "tiny", "--epochs", "8", "--lr", "3e-3", "--batch-size", "8", "--max-length", "128",
                   "--tiny-hidden", "32", "--tiny-layers", "1", "--tiny-vocab", "300", "--device", "cpu", "--json")
    assert metrics["pairs"] == len(pairs) and metrics["steps"] == 8 * math.ceil(len(pairs) / 8)
    assert metrics["train_accuracy_end"] > max(metrics["train_accuracy_start"], 0.5) + 0.2, metrics
    assert metrics["loss_mean_last_epoch"] < math.log(2), metrics  # below the chance-level BT loss
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()

    # the trained model as a judge on the same pairs: candidate = chosen, so its win rate is its pair accuracy
    summary = _run(capsys, "eval", "winrate", "--judge", "reward-model", "--reward-model", str(out), "--pairs",
                   str(data), "--device", "cpu", "--max-length", "128", "--out", str(tmp_path / "v.jsonl"), "--json")
    assert summary["n"] == len(pairs) and summary["ties"] == 0
    assert summary["win_rate"] == pytest.approx(metrics["train_accuracy_end"])
    rows = [json.loads(line) for line in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert all((r["reward_candidate"] > r["reward_baseline"]) == (r["outcome"] == "win") for r in rows)
