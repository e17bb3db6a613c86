"""The study's behaviour across the issue-12 refactor, and β travelling from the study config to the evaluator.

Fixtures (`fixtures/reduced_study.yaml`: one micro size, DPO and ORPO, dense + dynamic at 0.5, a few items each) are
results.parquet tables — minus the wall-clock `tokens_per_s` and the `cell` column, rows in canonical order, floats
printed with 17 significant digits:

- `reduced_study_results_de9da54.csv`: made by the code BEFORE the refactor (commit de9da54, a separate checkout:
  `git worktree add /work/wt-ref de9da54`, then `PYTHONPATH=/work/wt-ref/src SPARSEALIGN_CACHE_DIR=<empty dir>
  sparsealign study --config reduced_study.yaml`).  The refactored code reproduced it exactly (commit 245681d).
  Since then, merged work changed some numbers on purpose: the batch-invariant dynamic controller (sparseq) moved
  the dynamic rows, the Wilson CIs (stats) filled CI columns, issue 9's design (one shared reward for every model,
  reference NLL / natural sparsity / KL metrics) added rows and computes the base model's reward in float64.  Every
  dense metric whose definition did not change must still agree with it (to 1e-7: the base reward is now summed in
  float64, was float32).  The n of the likelihood metrics is their own task count (4), no longer pass@1's (2).
  Packed pair scoring (one row per pair, the prompt once) moved preference values by float rounding only (< 1e-5)
  and the dynamic cells' realized sparsity / FLOPs skipped by ~0.001 (each prompt position is now counted once).
  Issue 21 added rows: the reference methods' implicit reward at every setting (`study.results.relative_to_base`)
  and sparse cells' margin correlation with their dense self; DPO's dense implicit reward accuracy now carries the
  Wilson CI of its 0/1 items (was a bootstrap); every earlier value is unchanged.  The packed reference pass of
  the training pairs (2026-12-07) moved the DPO rows by float rounding of the reference log-probs (largest: UF
  margin scale 93.7967 -> 93.7949); base and ORPO rows are unchanged.
- `reduced_study_results.csv`: the table as it is now; every column of every row must equal it.  A change meant to
  move these numbers regenerates it: `PYTHONPATH=tests python tests/e2e/test_reduced_grid.py RUN_DIR` on a finished run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import sparsealign_exe

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).parent / "fixtures"
ORDER = ["size", "method", "subset_fraction", "mode", "target_sparsity", "dataset", "metric"]


def canonical(results: Path) -> pd.DataFrame:
    table = pd.read_parquet(results)
    table = table[table["metric"] != "tokens_per_s"].drop(columns=["cell"])
    return table.sort_values(ORDER).reset_index(drop=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir) -> dict[str, str]:
    root = tmp_path_factory.mktemp("reduced")
    return {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_CACHE_DIR": str(root / "cache"),
            "SPARSEALIGN_RUNS_DIR": str(root / "runs"), "HF_HUB_OFFLINE": "1"}


def study(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run([*sparsealign_exe(), "study", "--config", str(FIXTURES / "reduced_study.yaml"), *args,
                           "--json"], env=env, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def summary(env) -> dict:
    out = study(env)
    assert out["failed"] == 0 and out["done"] == 13
    return out


@pytest.fixture(scope="module")
def table(summary) -> pd.DataFrame:
    return canonical(Path(summary["results"]))


def test_the_base_dense_cell_writes_the_reference_logps(summary, env, monkeypatch):
    """DPO's implicit reward needs the base model's log-probs of each held-out set: the base model's dense cell
    leaves them in the reference cache from its own scores (a parent of the DPO cell), equal to scoring the base
    model directly, and the DPO cell reads them from there."""
    import torch
    from safetensors.torch import load_file

    from sparsealign.align.logps import TokenizeSettings, score_pairs
    from sparsealign.data.preference import load_pairs
    from sparsealign.evaluate.preference.reference import reference_path
    from sparsealign.models.loading import LoadSettings, load_model

    torch.set_num_threads(1)
    run = Path(summary["run"])
    base_path = json.loads((run / "pretrain" / "family.json").read_text())["paths"]["micro-xs"]
    model, tok = load_model(base_path, LoadSettings())
    settings = TokenizeSettings(max_length=256, max_prompt_length=160)
    monkeypatch.setenv("SPARSEALIGN_CACHE_DIR", env["SPARSEALIGN_CACHE_DIR"])  # where the study's cells cached them
    for name in ("hh", "uf"):
        pairs = load_pairs(run / "pairs" / "micro-xs" / f"heldout_{name}.jsonl", warn=False).pairs
        saved = load_file(reference_path(base_path, tok, pairs, settings, "float32"))["logps"]
        direct = score_pairs(model, tok, pairs, settings)
        assert saved[:, 0].tolist() == direct["chosen_logps"].tolist() and len(pairs) == 8
        assert saved[:, 1].tolist() == direct["rejected_logps"].tolist()
    ledger = sqlite3.connect(run / "ledger.sqlite")
    (started_dpo,), (ended_base,) = (ledger.execute(f"select {col} from cells where stage = 'study.eval' and cell = ?", (cell,)).fetchone()
                                     for col, cell in (("started_at", "micro-xs/dpo/f1.000/dense/0.00"),
                                                       ("ended_at", "micro-xs/base/f1.000/dense/0.00")))
    assert started_dpo >= ended_base


def test_dense_cells_keep_the_projection_inputs_their_kl_cells_compare_against(summary):
    """KL(dense || sparse) and KL(aligned || base) read the dense side from the dense cell that already ran it
    (`study.evaluation.hidden_path`): one file per dense model, one entry per likelihood task, written before the
    cells that read it start (every aligned dense cell now waits for the base model's dense cell)."""
    import torch
    run = Path(summary["run"])
    saved = sorted(run.glob("eval/micro-xs/*/f1.000*/dense/0.00/mbpp_hidden_4.pt"))
    assert [p.parts[-5] for p in saved] == ["base", "dpo", "orpo"]
    hidden = torch.load(saved[0])
    assert len(hidden) == 4 and all(h.ndim == 2 and h.shape[0] > 0 for h in hidden)
    ledger = sqlite3.connect(run / "ledger.sqlite")
    times = dict(ledger.execute("select cell, started_at from cells where stage = 'study.eval'").fetchall())
    ended = dict(ledger.execute("select cell, ended_at from cells where stage = 'study.eval'").fetchall())
    assert times["micro-xs/orpo/f1.000/dense/0.00"] >= ended["micro-xs/base/f1.000/dense/0.00"]
    assert times["micro-xs/orpo/f1.000/dynamic/0.50"] >= ended["micro-xs/orpo/f1.000/dense/0.00"]


def assert_columns_equal(ours: pd.DataFrame, reference: pd.DataFrame, columns) -> None:
    assert len(ours) == len(reference)
    for column in columns:  # CSV dtypes (ints read back, all-NaN columns) aside, every value exactly equal
        if reference[column].dtype.kind in "fi":
            pd.testing.assert_series_equal(ours[column].astype(float).reset_index(drop=True),
                                           reference[column].astype(float).reset_index(drop=True),
                                           check_exact=True, check_names=False)
        else:
            assert list(ours[column]) == list(reference[column]), column


def test_results_equal_the_expected_table(table):
    expected = pd.read_csv(FIXTURES / "reduced_study_results.csv")
    assert sorted(table.columns) == sorted(expected.columns)
    assert_columns_equal(table, expected, expected.columns)


def test_dense_results_equal_the_pre_refactor_run(table):
    """Dense metrics whose definition did not change since de9da54 are still equal.  Changed on purpose (issue 9):
    a dense cell's realized sparsity is now the model's natural ReLU sparsity (was 0), and aligned models are
    compared on the shared reward (their own implicit reward moved to `implicit_*`), so only the base model's
    preference metrics, pass@1 and the reward-free ranking accuracy keep their old definition; preference divergence
    is read at a fitted margin scale since issue 20 (its raw-scale value could not move)."""
    before = pd.read_csv(FIXTURES / "reduced_study_results_de9da54.csv")
    before = before[before["mode"] == "dense"]
    key = [c for c in ORDER if c != "subset_fraction"]
    both = table[table["mode"] == "dense"].merge(before, on=key, suffixes=("", "_before"))
    same = ~both["metric"].isin(["realized_sparsity", "preference_divergence"]) & (
        (both["method"] == "base") | both["metric"].isin(["pass@1", "ranking_accuracy"]))
    kept = both[same]
    assert len(kept) >= 18 and set(kept["method"]) == {"base", "dpo", "orpo"}
    pd.testing.assert_series_equal(kept["value"].astype(float), kept["value_before"].astype(float), rtol=0, atol=1e-7,
                                   check_names=False)


def test_a_non_default_beta_reaches_the_evaluator_under_device_map_auto(env):
    """β travels from the study config to the evaluator; the run loads through accelerate's placement
    (`load.device_map=auto`, as the paper preset loads a 70B cell), on CPU."""
    summary = study(env, "--name", "beta", "--set", "alignment.settings.beta=0.2", "--set", "alignment.methods=[dpo]",
                    "--set", "sparsity.modes=[]", "--set", "load.device_map=auto")
    assert summary["failed"] == 0
    run = Path(summary["run"])
    record = json.loads((run / "align/micro-xs/dpo/f1.000/model/sparsealign_alignment.json").read_text())
    assert record["method"] == "dpo" and record["beta"] == 0.2
    aligned = json.loads((run / "eval/micro-xs/dpo/f1.000/dense/0.00/metrics.json").read_text())
    # every model is compared on one shared reward; the method's own implicit reward uses the β it trained with
    shared = {"method": "simpo", "beta": 1.0, "shared_reward": "mean token log-prob"}
    assert aligned["scoring"] == shared and aligned["implicit_beta"] == 0.2
    assert 0.0 <= aligned["hh_reward_accuracy"] <= 1.0
    base = json.loads((run / "eval/micro-xs/base/f1.000/dense/0.00/metrics.json").read_text())
    assert base["scoring"] == shared and "implicit_beta" not in base


def test_a_code_only_family_is_aligned_and_asked_on_code(env):
    """The micro family never saw English (family.english unset: by kind): its training pairs are code only, no
    cell scores a dialogue set, and the dialogue sets appear only as their longer-response-wins baseline."""
    summary = study(env, "--name", "codeonly", "--set", "family.english=null", "--set", "alignment.methods=[dpo]",
                    "--set", "sparsity.modes=[]")
    assert summary["failed"] == 0
    run = Path(summary["run"])
    train = [json.loads(line) for line in (run / "pairs/micro-xs/train.jsonl").read_text().splitlines()]
    assert train and all(row["id"].startswith("code:") for row in train)
    for cell in ("base", "dpo"):
        metrics = json.loads((run / f"eval/micro-xs/{cell}/f1.000/dense/0.00/metrics.json").read_text())
        assert not [k for k in metrics if k.startswith(("hh_", "uf_"))], metrics
    table = pd.read_parquet(summary["results"])
    dialogue = table[table["dataset"].isin(["hh", "uf"])]
    assert set(dialogue["metric"]) == {"length_baseline_accuracy"} and set(dialogue["dataset"]) == {"hh", "uf"}
    assert (dialogue["n"] == 8).all() and dialogue["value"].between(0, 1).all()
    assert "hh: no English (the micro family is pretrained on code only)" in Path(summary["markdown"]).read_text()


def test_every_sparse_cell_reports_realized_sparsity_per_dataset(table):
    """Thresholds must realize their target per domain, not only over the whole sequence: each sparse cell has a
    realized-sparsity row for every dataset it ran (generation, the MBPP references, each preference set), each
    within a few points of the cell's overall number."""
    sparse = table[(table["mode"] != "dense") & table["metric"].str.endswith("realized_sparsity")]
    for (method, mode), rows in sparse.groupby(["method", "mode"]):
        per = {(d, m): v for d, m, v in zip(rows["dataset"], rows["metric"], rows["value"], strict=True)}
        assert {("mbpp", "realized_sparsity"), ("generated", "realized_sparsity"), ("hh", "realized_sparsity"),
                ("uf", "realized_sparsity"), ("mbpp", "reference_realized_sparsity")} <= set(per), (method, per)
        overall = per[("all", "realized_sparsity")]
        assert all(abs(v - overall) < 0.05 for v in per.values()), (method, mode, per)


def test_the_study_runs_in_bfloat16_on_cpu(env, table):
    """`load.dtype` reaches every cell: the aligned model is trained and saved in bf16, every cell finishes, and
    the bf16 results track the fp32 ones (realized sparsity within 0.01)."""
    from safetensors import safe_open

    summary = study(env, "--name", "bf16", "--set", "load.dtype=bfloat16")
    assert summary["failed"] == 0 and summary["done"] == 13
    run = Path(summary["run"])
    with safe_open(run / "align/micro-xs/dpo/f1.000/model/model.safetensors", "pt") as weights:
        assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"torch.bfloat16"}  # noqa: SIM118
    bf16 = canonical(run / "results.parquet")
    both = bf16.merge(table, on=ORDER, suffixes=("_bf16", ""))
    assert len(both) == len(table)
    sparsity = both[both["metric"] == "realized_sparsity"]
    assert ((sparsity["value_bf16"] - sparsity["value"]).abs() < 0.01).all()


if __name__ == "__main__":  # regenerate the fixture from a finished run of reduced_study.yaml
    canonical(Path(sys.argv[1]) / "results.parquet").to_csv(FIXTURES / "reduced_study_results.csv", index=False,
                                                             float_format="%.17g")
