"""The study's behaviour across the issue-12 refactor, and β travelling from the study config to the evaluator.

`fixtures/reduced_study_results.csv` is the results.parquet (minus the wall-clock `tokens_per_s` and the `cell`
column, rows in canonical order, floats printed with 17 significant digits) that the code BEFORE the refactor
(commit de9da54) produced for `fixtures/reduced_study.yaml` — one micro size, DPO and ORPO, dense + dynamic at 0.5:

    git worktree add /work/wt-ref de9da54
    PYTHONPATH=/work/wt-ref/src SPARSEALIGN_CACHE_DIR=<empty dir> sparsealign study --config reduced_study.yaml

The same run on this code must give the same table, exactly.  A change that is meant to move these numbers (a new
default, a new metric) regenerates the fixture with `python tests/e2e/test_reduced_grid.py OUT_RUN_DIR`.
"""

from __future__ import annotations

import json
import os
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


def test_results_equal_the_pre_refactor_reference(env):
    summary = study(env)
    assert summary["failed"] == 0 and summary["done"] == 13
    ours = canonical(Path(summary["results"]))
    reference = pd.read_csv(FIXTURES / "reduced_study_results.csv")
    assert len(ours) == len(reference) == 99
    for column in reference.columns:  # CSV dtypes (ints, all-NaN columns) aside, every value equal
        a, b = ours[column].to_numpy(), reference[column].to_numpy()
        if reference[column].dtype.kind in "fi":
            pd.testing.assert_series_equal(ours[column].astype(float), reference[column].astype(float),
                                           check_exact=True, check_names=False)
        else:
            assert list(a) == list(b), column


def test_a_non_default_beta_reaches_the_evaluator(env):
    summary = study(env, "--name", "beta", "--set", "alignment.settings.beta=0.2", "--set", "alignment.methods=[dpo]",
                    "--set", "sparsity.modes=[]")
    run = Path(summary["run"])
    record = json.loads((run / "align/micro-xs/dpo/f1.000/model/sparsealign_alignment.json").read_text())
    assert record["method"] == "dpo" and record["beta"] == 0.2
    scored = json.loads((run / "eval/micro-xs/dpo/f1.000/dense/0.00/metrics.json").read_text())["scoring"]
    assert scored == {"method": "dpo", "beta": 0.2, "reference": record["reference"]}
    base = json.loads((run / "eval/micro-xs/base/f1.000/dense/0.00/metrics.json").read_text())["scoring"]
    assert base == {"method": "simpo", "beta": 1.0, "reference": None}  # the unaligned model's own reward


if __name__ == "__main__":  # regenerate the fixture from a finished run of reduced_study.yaml
    canonical(Path(sys.argv[1]) / "results.parquet").to_csv(FIXTURES / "reduced_study_results.csv", index=False,
                                                             float_format="%.17g")
