"""From the ledger to the outputs: `results.parquet` (one row per cell and metric) and the report.

Metric names in eval cells are `<dataset>_<metric>` (dataset: mbpp, generated, hh, uf, code) or plain
(`realized_sparsity`, `flops_skipped`, `tokens_per_s`, ...); `_ci_low` / `_ci_high` companions become the row's CI.
Proportions of 0/1 items (pass@1 from `<dataset>_passed`, reward accuracy from `<dataset>_correct`, flip rate from
the cell's and its dense cell's `<dataset>_correct`) get the Wilson interval of their per-item counts, whatever the
cell recorded: a bootstrap collapses at 0 and 1, and the eval cell stores pass@1 without a CI.  Generated-task
results keep their own dataset name and never enter MBPP figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsealign.align.config import facts
from sparsealign.ledger import Ledger
from sparsealign.stats.intervals import bootstrap_ci, wilson_interval
from sparsealign.study.cells import BASE, frac_tag
from sparsealign.study.config import DIALOGUE_SETS
from sparsealign.study.executor import ledger_stage

if TYPE_CHECKING:
    import pandas as pd

    from sparsealign.study.pipeline import Study

DATASETS = ("mbpp", "mbppfull", "generated", "hh", "uf", "code")
CELL_FIELDS = ("size", "method", "subset", "mode", "target_sparsity", "seed")
# metric -> its 0/1 per-item array
PROPORTION_ITEMS = {"pass@1": "passed", "reward_accuracy": "correct", "implicit_reward_accuracy": "implicit_correct"}
COLUMNS = ["cell", "family", "size", "params", "method", "subset_fraction", "mode", "target_sparsity", "dataset",
           "metric", "value", "ci_low", "ci_high", "n", "seed"]
ITEMS_OF = {"preference_divergence": "divergence"}  # metrics over a part of the dataset's items: their own array


def proportion_items(metric: str, dataset: str, items: dict, dense: dict) -> list[float] | None:
    """The 0/1 per-item outcomes behind a proportion metric: tasks passed, pairs ranked right, or (flip_rate) pairs
    whose ranking differs from the same model's dense cell; None for other metrics or missing arrays."""
    if metric == "flip_rate":
        a, b = dense.get(f"{dataset}_correct"), items.get(f"{dataset}_correct")
        return [float(x != y) for x, y in zip(a, b, strict=True)] if a and b and len(a) == len(b) else None
    return items.get(f"{dataset}_{PROPORTION_ITEMS[metric]}") if metric in PROPORTION_ITEMS else None


def proportion_ci(values: list[float] | None, value: float) -> tuple[float, float] | None:
    """Wilson CI from 0/1 outcomes; None when there are none or they do not reproduce the recorded value (then the
    cell's own CI stands)."""
    if not values or any(v not in (0, 1) for v in values) or abs(sum(values) / len(values) - value) > 1e-9:
        return None
    ci = wilson_interval(int(sum(values)), len(values))
    return ci.low, ci.high


def _load_items(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def relative_to_base(items: Mapping[str, Mapping[str, list]], betas: Mapping[str, float]) -> dict[str, dict]:
    """Each reference method's implicit reward beta * log(pi / pi_base) under every setting it was evaluated at.

    `items`: eval cell key -> its per-item arrays; `betas`: the keys of reference-method cells -> their beta.  For
    every held-out set where such a cell and the base model's cell at the same mode and target both recorded
    `<set>_logratio` (summed log-prob of chosen minus rejected), the cell gains `<set>_implicit_margin` =
    beta * (logratio - logratio_base) and `<set>_implicit_correct` = margin > 0: policy and reference both under
    the cell's own sparsity, so sparse - dense of it is the interaction on that scale.  The base model relative to
    itself is 0 on every pair, so it gets no such arrays."""
    out = {key: dict(arrays) for key, arrays in items.items()}
    for key, beta in betas.items():
        parts = key.split("/")
        base = items.get("/".join([parts[0], BASE, frac_tag(1.0), *parts[-2:]]), {})
        for name, values in items.get(key, {}).items():
            ref = base.get(name)
            if not name.endswith("_logratio") or ref is None or len(ref) != len(values):
                continue
            margin = [beta * (a - b) for a, b in zip(values, ref, strict=True)]
            dataset = name.removesuffix("_logratio")
            out[key][f"{dataset}_implicit_margin"] = margin
            out[key][f"{dataset}_implicit_correct"] = [float(x > 0) for x in margin]
    return out


def _implicit_metrics(items: Mapping[str, list], n_resamples: int, seed: int) -> dict[str, float]:
    """`<set>_implicit_reward_accuracy` and `<set>_implicit_mean_margin` (bootstrap CI) from the derived arrays."""
    out: dict[str, float] = {}
    for name, values in items.items():
        if name.endswith("_implicit_correct"):
            dataset = name.removesuffix("_implicit_correct")
            for metric, arr in (("reward_accuracy", values), ("mean_margin", items[f"{dataset}_implicit_margin"])):
                ci = bootstrap_ci(arr, n_resamples=n_resamples, seed=seed)
                key = f"{dataset}_implicit_{metric}"
                out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = ci.estimate, ci.low, ci.high
    return out


def _split_metric(name: str) -> tuple[str, str]:
    head, _, rest = name.partition("_")
    return (head, rest) if head in DATASETS and rest else ("all", name)


def results_table(study: Study) -> pd.DataFrame:
    """Tidy table: family (its label: families are never pooled), size, params, method, subset_fraction, mode,
    target_sparsity, dataset, metric, value, CI, n."""
    import pandas as pd

    family_path = study.root / "pretrain" / "family.json"
    family = json.loads(family_path.read_text()) if family_path.exists() else {}
    params, family_name = family.get("params", {}), family.get("family", study.cfg.family.name)
    rows: list[dict[str, Any]] = []

    def add(cell: str, m: dict, dataset: str, metric: str, value: float, low: Any, high: Any, n: Any) -> None:
        rows.append({"cell": cell, "family": family_name, "size": m["size"], "params": params.get(m["size"]),
                     "method": m["method"], "subset_fraction": float(m["subset"]), "mode": m["mode"],
                     "target_sparsity": float(m["target_sparsity"]), "dataset": dataset, "metric": metric,
                     "value": float(value), "ci_low": low, "ci_high": high, "n": n,
                     "seed": m.get("seed")})  # the alignment seed, once cells carry one

    with Ledger(study.root / "ledger.sqlite") as ledger:
        eval_rows = ledger.rows(stage=ledger_stage("eval"), status="done")
        pairs_rows = ledger.rows(stage=ledger_stage("pairs"), status="done")
    for row in pairs_rows:  # a code-only family's dialogue sets: only their longer-response-wins baseline
        base_dense = {"size": row.cell, "method": BASE, "subset": 1.0, "mode": "dense", "target_sparsity": 0.0}
        for dataset in DIALOGUE_SETS:
            name = f"{dataset}_length_baseline_accuracy"
            if name in row.metrics:
                add(f"pairs/{row.cell}", base_dense, dataset, "length_baseline_accuracy", row.metrics[name],
                    row.metrics.get(f"{name}_ci_low"), row.metrics.get(f"{name}_ci_high"),
                    row.metrics.get(f"{dataset}_pairs"))
    derived = item_arrays(study)
    for row in eval_rows:
        items = derived.get(row.cell, {})
        m = {**_implicit_metrics(items, study.cfg.evaluation.bootstrap, study.cfg.seed), **row.metrics}
        dense_key = "/".join([*row.cell.split("/")[:-2], "dense", "0.00"])  # the same model's dense cell
        dense = derived.get(dense_key, {}) if m["mode"] != "dense" else {}
        for name, value in m.items():
            if name in CELL_FIELDS or name.endswith(("_ci_low", "_ci_high")) or not isinstance(value, (int, float)):
                continue
            dataset, metric = _split_metric(name)
            n = None  # the metric's own per-item array where it has one (the likelihood metrics cover more tasks
            for key in (f"{dataset}_passed", f"{dataset}_margin", f"{dataset}_{ITEMS_OF.get(metric, metric)}",
                        name):  # than pass@1), else the dataset's
                if key in items:
                    n = len(items[key])
            low, high = proportion_ci(proportion_items(metric, dataset, items, dense), float(value)) or (
                m.get(f"{name}_ci_low"), m.get(f"{name}_ci_high"))
            add(row.cell, m, dataset, metric, value, low, high, n)
    return pd.DataFrame(rows, columns=COLUMNS)


def item_arrays(study: Study) -> dict[str, dict[str, list[float]]]:
    """Per eval cell, the per-item arrays (task passed, pair correct, margins) for paired bootstraps, with the
    reference methods' implicit rewards at every setting (`relative_to_base`)."""
    out: dict[str, dict[str, list[float]]] = {}
    betas: dict[str, float] = {}
    for path in sorted((study.root / "eval").rglob("items.json")):
        key = str(path.parent.relative_to(study.root / "eval"))
        out[key] = json.loads(path.read_text())
        beta = _load_items(path.with_name("metrics.json")).get("implicit_beta")
        if beta is not None and facts(key.split("/")[1]).needs_reference:  # ORPO's / SimPO's reward is their own
            betas[key] = float(beta)
    return relative_to_base(out, betas)


def traces(study: Study) -> dict[str, dict[str, Any]]:
    """Realized-sparsity traces of the sparse eval cells, keyed by cell."""
    out = {}
    for path in sorted((study.root / "eval").rglob("trace.json")):
        out[str(path.parent.relative_to(study.root / "eval"))] = json.loads(path.read_text())
    return out


def findings_of(run: str | Path) -> list[dict]:
    """The Findings the report wrote for a run (`findings.json`), [] when none were written (no results yet)."""
    path = Path(run) / "findings.json"
    return json.loads(path.read_text()) if path.is_file() else []
