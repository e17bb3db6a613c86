"""The study end to end through the real `sparsealign study` subprocess, on the smallest grid that still runs every
stage for real: one micro size pretrained for a few steps (cached once per session in SPARSEALIGN_CACHE_DIR), DPO on
HH + execution-feedback code pairs, dynamic-threshold sparsity, sandboxed MBPP/generated-task execution, the report.

One uninterrupted run is the reference; a run killed with SIGKILL after its first alignment cell and then resumed,
and a Ray re-run of some eval cells, must end with the same metrics (decode speed aside).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CliResult, assert_one_line_error, sparsealign_exe

pytestmark = pytest.mark.slow

TINY = """\
name: tiny
seed: 0
family: {kind: micro, preset: micro, sizes: [micro-xs], pretrain_steps: 10, english: true}
alignment: {methods: [dpo], max_pairs: 16, heldout_pairs: 8, code_pair_tasks: 4, code_pair_samples: 2,
            subsets: [1.0], subset_methods: [dpo], seeds: 1}
sparsity: {targets: [0.5], modes: [dynamic], calibration_texts: 4}
evaluation: {mbpp_limit: 2, generated_tasks: 2, max_new_tokens: 16, shots: 0, bootstrap: 100, speed_tokens: 4,
             uf_pairs: 8, likelihood_tasks: 4, heldout_code: samples, sparse_sets: [hh, uf, code]}
executor: {kind: local, workers: 1}
report: {primary_contrasts: [{question: thresholds, dataset: hh, metric: reward_accuracy}]}
"""
N_CELLS = 9  # pretrain, pairs, align, 2 x (dense eval, calibrate, dynamic eval)
TIMING = {"tokens_per_s"}  # wall-clock measurements: the only metrics allowed to differ between runs


class Env:
    """Subprocess environment shared by the module: one model cache, separate runs roots per scenario."""

    def __init__(self, root: Path, data_dir: Path):
        self.root = root
        self.config = root / "tiny.yaml"
        self.config.write_text(TINY)
        self.base = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_CACHE_DIR": str(root / "cache"),
                     "HF_HUB_OFFLINE": "1"}

    def env(self, runs: str) -> dict[str, str]:
        return {**self.base, "SPARSEALIGN_RUNS_DIR": str(self.root / runs)}

    def study(self, runs: str, *args: str, timeout: float = 900) -> CliResult:
        proc = subprocess.run([*sparsealign_exe(), "study", "--config", str(self.config), *args], cwd=self.root,
                              env=self.env(runs), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, runs: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*sparsealign_exe(), "study", "--config", str(self.config), *args], cwd=self.root,
                                env=self.env(runs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True)


def ledger_rows(run: Path) -> dict[tuple[str, str], dict]:
    conn = sqlite3.connect(run / "ledger.sqlite", timeout=30)
    try:
        cur = conn.execute("SELECT stage, cell, status, attempts, started_at, metrics FROM cells")
        return {(s, c): {"status": st, "attempts": a, "started_at": t, "metrics": json.loads(m or "{}")}
                for s, c, st, a, t, m in cur.fetchall()}
    finally:
        conn.close()


def study_rows(run: Path) -> dict[tuple[str, str], dict]:
    return {k: v for k, v in ledger_rows(run).items() if k[0].startswith("study.")}


def metrics_table(run: Path):
    """results.parquet without wall-clock metrics, in a canonical row order."""
    import pandas as pd

    table = pd.read_parquet(run / "results.parquet")
    table = table[~table["metric"].isin(TIMING)].drop(columns=["cell"])
    return table.sort_values(["size", "method", "subset_fraction", "mode", "target_sparsity", "dataset",
                              "metric"]).reset_index(drop=True)


def assert_same_metrics(run: Path, reference: Path) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(metrics_table(run), metrics_table(reference), check_exact=True)
    ours, ref = study_rows(run), study_rows(reference)
    for key in ref:  # alignment losses / pair statistics too, not only the eval table
        if key[0] in ("study.align", "study.pairs", "study.calibrate"):
            assert deterministic(ours[key]["metrics"]) == deterministic(ref[key]["metrics"]), key


def deterministic(metrics: dict) -> dict:
    """Drop wall-clock figures and cache bookkeeping (the reference log-prob cache is shared across runs)."""
    return {k: v for k, v in metrics.items() if not any(w in k for w in ("per_s", "runtime", "cache"))}


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir) -> Env:
    return Env(tmp_path_factory.mktemp("study"), data_dir)


@pytest.fixture(scope="module")
def reference(env: Env) -> Path:
    """Test 1's uninterrupted run, also the reference for the resume and Ray tests."""
    res = env.study("runs-ref", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = res.json()
    assert summary["done"] == N_CELLS and summary["failed"] == 0, summary
    return Path(summary["run"])


def test_end_to_end_study(reference: Path):
    for name in ("report.md", "report.html", "results.parquet", "config/study.yaml"):
        assert (reference / name).is_file(), name
    rows = study_rows(reference)
    assert len(rows) == N_CELLS and all(r["status"] == "done" and r["attempts"] == 1 for r in rows.values()), rows
    import pandas as pd

    table = pd.read_parquet(reference / "results.parquet")
    pass1 = table[table["metric"] == "pass@1"]
    # MBPP and generated tasks are separate datasets, one pass@1 row each per eval cell (4 cells), never merged
    assert sorted(pass1["dataset"].unique()) == ["generated", "mbpp"]
    assert (pass1.groupby("dataset").size() == 4).all()
    assert pass1["value"].between(0, 1).all()
    realized = table[(table["mode"] == "dynamic") & (table["metric"] == "realized_sparsity")]
    sparse = realized[realized["dataset"] == "all"]  # the whole sequence; one row per dataset beside it
    assert len(sparse) == 2 and (sparse["value"] > 0).all()
    assert {"mbpp", "generated", "hh", "uf"} <= set(realized["dataset"])
    # held-out human preference pairs were scored for every cell
    assert set(table[table["metric"] == "reward_accuracy"]["dataset"]) >= {"hh", "uf"}
    html = (reference / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html
    assert "generated" in (reference / "report.md").read_text()


def test_sigkill_then_resume_equals_uninterrupted(env: Env, reference: Path):
    proc = env.popen("runs-kill", "--json")
    run = env.root / "runs-kill" / "tiny"
    deadline = time.monotonic() + 900
    try:
        while True:  # kill as soon as the first alignment cell is recorded done
            assert proc.poll() is None, f"study ended before it could be killed: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no alignment cell finished in time"
            try:
                rows = study_rows(run) if (run / "ledger.sqlite").exists() else {}
            except sqlite3.OperationalError:  # the study is still creating the ledger's tables
                rows = {}
            if rows.get(("study.align", "micro-xs/dpo/f1.000"), {}).get("status") == "done":
                break
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = study_rows(run)
    done_before = {k: v for k, v in before.items() if v["status"] == "done"}
    assert ("study.pretrain", "family") in done_before and len(done_before) < N_CELLS, before
    assert not (run / "results.parquet").exists()

    res = env.study("runs-kill", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = res.json()
    assert summary["skipped"] == len(done_before) and summary["done"] == N_CELLS - len(done_before), summary
    after = study_rows(run)
    for key, row in done_before.items():  # finished cells were kept, not re-run
        assert after[key]["attempts"] == 1 and after[key]["started_at"] == row["started_at"], key
    assert all(r["status"] == "done" for r in after.values()) and len(after) == N_CELLS
    # same seed -> same metrics, whether interrupted or not, in another run directory
    assert_same_metrics(run, reference)


def test_ray_executor_matches_local(env: Env, reference: Path):
    """Drop the aligned model's eval cells from a copy of the reference run and recompute them as Ray tasks."""
    run = env.root / "runs-ray" / "tiny"
    shutil.copytree(reference, run)
    conn = sqlite3.connect(run / "ledger.sqlite")
    with conn:
        gone = conn.execute("DELETE FROM cells WHERE stage='study.eval' AND cell LIKE 'micro-xs/dpo/%'").rowcount
    conn.close()
    assert gone == 2
    shutil.rmtree(run / "eval" / "micro-xs" / "dpo")
    (run / "results.parquet").unlink()

    res = env.study("runs-ray", "--set", "executor.kind=ray", "--only", "eval")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 cells run, 2 skipped (done before), 0 failed" in res.stdout, res.stdout
    assert "study (ray)" in res.stderr  # the progress line follows cells as Ray finishes them
    assert (run / "eval" / "micro-xs" / "dpo" / "f1.000" / "dynamic" / "0.50" / "items.json").is_file()
    assert_same_metrics(run, reference)


def test_changed_config_is_refused_and_restart_discards(env: Env, reference: Path):
    runs = "runs-restart"
    run = env.root / runs / "tiny"
    shutil.copytree(reference, run)
    res = env.study(runs, "--set", "evaluation.mbpp_limit=3", "--only", "pretrain")
    assert_one_line_error(res, "different study config", "evaluation.mbpp_limit", "--restart")
    assert res.returncode == 2
    assert study_rows(run) == study_rows(reference)
    # the executor says where cells run, not what they compute: changing it is not a changed study
    res = env.study(runs, "--set", "executor.cpus_per_cell=2", "--only", "pretrain", "--json")
    assert res.returncode == 0 and res.json()["skipped"] == 1, res.stderr[-2000:]

    res = env.study(runs, "--set", "evaluation.mbpp_limit=3", "--only", "pretrain", "--restart", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.json()["done"] == 1
    assert "mbpp_limit: 3" in (run / "config" / "study.yaml").read_text()
    assert list(study_rows(run)) == [("study.pretrain", "family")]
    assert not (run / "eval").exists()


def test_failed_cell_is_recorded_and_the_others_kept(env: Env, reference: Path):
    """A broken aligned checkpoint fails its eval cell for real; its dependant is failed without running, the base
    model's cells stay done, results and report are still written, and `study report` rebuilds them."""
    runs = "runs-fail"
    run = env.root / runs / "tiny"
    shutil.copytree(reference, run)
    conn = sqlite3.connect(run / "ledger.sqlite")
    with conn:
        conn.execute("DELETE FROM cells WHERE stage='study.eval' AND cell LIKE 'micro-xs/dpo/%'")
    conn.close()
    shutil.rmtree(run / "eval" / "micro-xs" / "dpo")
    for weights in (run / "align" / "micro-xs" / "dpo" / "f1.000" / "model").glob("*.safetensors"):
        weights.write_bytes(b"not a checkpoint")

    res = env.study(runs, "--only", "eval", "--json")
    assert res.returncode == 1, res.stderr[-2000:]
    summary = res.json()
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 2, 2), summary
    assert "warning: 2 cell(s) failed" in res.stderr and "Traceback" not in res.stderr
    rows = study_rows(run)
    dense, sparse = ("study.eval", "micro-xs/dpo/f1.000/dense/0.00"), ("study.eval", "micro-xs/dpo/f1.000/dynamic/0.50")
    assert rows[dense]["status"] == "failed" and rows[sparse]["status"] == "failed"
    conn = sqlite3.connect(run / "ledger.sqlite")
    errors = dict(conn.execute("SELECT cell, error FROM cells WHERE status='failed'").fetchall())
    conn.close()
    assert errors[sparse[1]] == f"dependency eval:{dense[1]} did not finish"
    assert errors[dense[1]]  # the real exception's one-line message
    import pandas as pd

    table = pd.read_parquet(run / "results.parquet")
    assert set(table["method"]) == {"base"} and (run / "report.html").is_file()

    findings = json.loads((run / "findings.json").read_text())
    (run / "report.html").unlink()
    (run / "findings.json").unlink()
    res = env.study(runs, "report", "--name", "tiny", "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert (run / "report.html").is_file() and Path(res.json()["results"]) == run / "results.parquet"
    # the rebuilt report uses the run's own report settings (primary contrasts), not the defaults
    assert json.loads((run / "config" / "report.json").read_text())["primary_contrasts"]
    assert json.loads((run / "findings.json").read_text()) == findings


def test_pass1_wilson_ci_and_findings_reach_the_outputs(env: Env, reference: Path):
    """pass@1 rows of results.parquet carry the Wilson CI of the cell's per-task outcomes, and `study --json` has
    the report's findings, also when every cell is already done (a pure re-report)."""
    import pandas as pd

    from sparsealign.stats.intervals import wilson_interval

    table = pd.read_parquet(reference / "results.parquet")
    pass1 = table[table["metric"] == "pass@1"]
    assert len(pass1) == 8 and pass1["ci_low"].notna().all() and pass1["ci_high"].notna().all()
    for row in pass1.itertuples():
        items = json.loads((reference / "eval" / row.cell / "items.json").read_text())[f"{row.dataset}_passed"]
        ci = wilson_interval(int(sum(items)), len(items))
        assert (row.ci_low, row.ci_high, row.n) == (pytest.approx(ci.low), pytest.approx(ci.high), len(items))
        assert row.ci_high > row.value or row.value == 1.0  # never the collapsed [0, 0] of a bootstrap at 0
    for row in table[table["metric"] == "reference_nll"].itertuples():  # n = its own tasks (4), not pass@1's (2)
        items = json.loads((reference / "eval" / row.cell / "items.json").read_text())["mbpp_reference_nll"]
        assert row.n == len(items) == 4
    flips = table[table["metric"] == "flip_rate"]  # pairs ranked differently than by the same model dense
    assert len(flips) == 4 and ((flips["ci_high"] > flips["value"]) | (flips["value"] == 1.0)).all()

    res = env.study("runs-ref", "--json")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = res.json()
    assert summary["done"] == 0 and summary["skipped"] == N_CELLS
    findings = summary["findings"]
    assert findings and findings == json.loads((reference / "findings.json").read_text())
    for f in findings:
        assert {"question", "effect", "ci_low", "ci_high", "n", "p_holm", "verdict"} <= set(f)
        assert f["verdict"] in ("effect", "inconclusive", "not measurable")
    # one size and 8 held-out pairs: nothing in this tiny study can be measured, and it says so
    assert {f["verdict"] for f in findings} == {"not measurable"}
    assert "## Findings" in (reference / "report.md").read_text()
