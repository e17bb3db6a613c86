"""The dose-response figures read off their matplotlib lines: x is the REALIZED sparsity of the same cell on the same
dataset, dense is a lone marker at its natural sparsity, a target with no measurement breaks the line, and the
trace figure tells static from dynamic by colour and marks where the evaluation domain changes."""

from __future__ import annotations

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba

from sparsealign.models.tiny import build_llama, train_tokenizer
from sparsealign.report import figures
from sparsealign.report import render as report
from sparsealign.sparse.calibration.calibrate import calibrate
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime.patch import apply_sparsity
from sparsealign.study.evaluation import EvalContext, _thin_trace, domain

TARGETS = (0.8, 0.9, 0.95)
SIZES = {"micro-s": 328_128, "micro-m": 1_311_872}


def _row(size, mode, target, metric, value, dataset="mbpp", seed=0, **extra):
    return {"size": size, "params": SIZES[size], "method": "dpo", "subset_fraction": 1.0, "mode": mode,
            "target_sparsity": target, "dataset": dataset, "metric": metric, "value": value, "seed": seed, **extra}


def realized_mbpp(size, mode, target):
    """The planted per-dataset realized sparsity: never the target itself."""
    return round(target - (0.02 if mode == "static" else 0.01) - (0.01 if size == "micro-m" else 0.0), 4)


def study_rows(*, drop=(), natural=0.42, per_dataset=True) -> pd.DataFrame:
    """pass@1 on mbpp, tokens_per_s, and realized sparsity (mbpp and whole-sequence 'all' rows) for two sizes, dense +
    static/dynamic at three targets; `drop`: (size, mode, target) cells whose pass@1 row is missing."""
    rows = []
    for size in SIZES:
        rows.append(_row(size, "dense", 0.0, "pass@1", 0.50, ci_low=0.45, ci_high=0.55))
        rows.append(_row(size, "dense", 0.0, "tokens_per_s", 100.0, dataset="all"))
        if natural is not None:
            rows.append(_row(size, "dense", 0.0, "realized_sparsity", natural, dataset="all"))
        for mode in ("static", "dynamic"):
            for t in TARGETS:
                if (size, mode, t) not in drop:
                    rows.append(_row(size, mode, t, "pass@1", 0.5 - t / 4, ci_low=0.4 - t / 4, ci_high=0.6 - t / 4))
                rows.append(_row(size, mode, t, "tokens_per_s", 100 + 100 * t, dataset="all"))
                rows.append(_row(size, mode, t, "realized_sparsity", t - 0.05, dataset="all"))
                if per_dataset:
                    rows.append(_row(size, mode, t, "realized_sparsity", realized_mbpp(size, mode, t)))
    return pd.DataFrame(rows)


def lines_of(fig) -> dict[str, object]:
    return {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}


def xy(line) -> tuple[list[float], list[float]]:
    return [float(v) for v in line.get_xdata()], [float(v) for v in line.get_ydata()]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_x_is_the_realized_sparsity_on_the_same_dataset():
    fig = figures.accuracy_vs_sparsity(study_rows(), metric="pass@1", dataset="mbpp")
    lines = lines_of(fig)
    for size in SIZES:
        for mode in ("static", "dynamic"):
            x, y = xy(lines[f"{size}/{mode}"])
            assert x == pytest.approx([realized_mbpp(size, mode, t) for t in TARGETS])  # not the targets
            assert y == pytest.approx([0.5 - t / 4 for t in TARGETS])
    assert fig.axes[0].get_xlabel() == "realized sparsity (mbpp)"


def test_the_whole_sequence_row_stands_in_where_the_dataset_has_none():
    fig = figures.accuracy_vs_sparsity(study_rows(per_dataset=False), metric="pass@1", dataset="mbpp")
    x, _ = xy(lines_of(fig)["micro-s/static"])
    assert x == pytest.approx([t - 0.05 for t in TARGETS])


def test_dense_is_a_lone_marker_at_its_natural_sparsity():
    fig = figures.accuracy_vs_sparsity(study_rows(), metric="pass@1", dataset="mbpp")
    lines = lines_of(fig)
    dense = lines["micro-s/dense"]
    assert xy(dense) == ([0.42], [0.5]) and dense.get_linestyle() == "None"
    for gid, line in lines.items():  # no sparse line reaches the dense point (or 0, where the old figure put it)
        if not gid.endswith("/dense"):
            x, _ = xy(line)
            assert min(x) > 0.7 and 0.42 not in x and 0.0 not in x


def test_dense_without_a_natural_sparsity_is_left_out():
    fig = figures.accuracy_vs_sparsity(study_rows(natural=None), metric="pass@1", dataset="mbpp")
    lines = lines_of(fig)
    assert "micro-s/dense" not in lines and "micro-s/static" in lines


def test_a_missing_target_breaks_the_line():
    fig = figures.accuracy_vs_sparsity(study_rows(drop={("micro-m", "static", 0.9)}), metric="pass@1",
                                       dataset="mbpp")
    x, y = xy(lines_of(fig)["micro-m/static"])
    assert len(x) == 3 and math.isnan(x[1]) and math.isnan(y[1])  # a gap, not a line from 0.8 to 0.95
    assert x[0] == pytest.approx(realized_mbpp("micro-m", "static", 0.8))
    assert x[2] == pytest.approx(realized_mbpp("micro-m", "static", 0.95))
    assert not any(math.isnan(v) for v in xy(lines_of(fig)["micro-s/static"])[0])


def test_seeds_are_pooled_per_cell():
    df = study_rows()
    again = df.assign(seed=1, value=np.where(df["metric"] == "pass@1", df["value"] + 0.1,
                                             np.where(df["metric"] == "realized_sparsity", df["value"] + 0.002,
                                                      df["value"])))
    fig = figures.accuracy_vs_sparsity(pd.concat([df, again]), metric="pass@1", dataset="mbpp")
    x, y = xy(lines_of(fig)["micro-s/dynamic"])
    assert x == pytest.approx([realized_mbpp("micro-s", "dynamic", t) + 0.001 for t in TARGETS])
    assert y == pytest.approx([0.55 - t / 4 for t in TARGETS])


def test_no_realized_sparsity_no_figure():
    df = study_rows(natural=None)
    assert figures.accuracy_vs_sparsity(df[df["metric"] != "realized_sparsity"], metric="pass@1",
                                        dataset="mbpp") is None


def test_speed_is_drawn_against_whole_sequence_realized_sparsity():
    fig = figures.speed_vs_sparsity(study_rows())
    lines = lines_of(fig)
    x, y = xy(lines["micro-m/dynamic"])
    assert x == pytest.approx([t - 0.05 for t in TARGETS]) and y == pytest.approx([100 + 100 * t for t in TARGETS])
    assert xy(lines["micro-m/dense"]) == ([0.42], [100.0]) and lines["micro-m/dense"].get_linestyle() == "None"


def _trace(n: int, prefill_every: int, level: float) -> dict:
    """A handle trace of n positions over two layers where every `prefill_every`-th position is dense prefill."""
    flags = [i % prefill_every == 0 for i in range(n)]
    series = [[level + 0.001 * (i % 7) for i in range(n)] for _ in range(2)]
    return {"layers": ["l0", "l1"], "realized_sparsity": series, "threshold": series, "prefill": flags}


def test_thin_trace_records_where_each_domain_starts_in_sparse_positions():
    trace = _trace(40, 4, 0.9)  # positions 0, 4, 8, ... are prefill: 30 sparse positions
    out = _thin_trace(trace, [("mbpp", 0), ("generated", 12), ("hh", 21)], max_points=10)
    # raw position 12 is the 10th sparse one (9 sparse before it), raw 21 has 15 sparse positions before it
    assert out["domains"] == [["mbpp", 0], ["generated", 9], ["hh", 15]]
    assert out["step"] == 3 and len(out["realized_sparsity"][0]) == 10
    assert _thin_trace(trace)["domains"] == []


def test_trace_figure_colours_modes_labels_targets_and_marks_domains():
    cells = {}
    for mode in ("static", "dynamic"):
        for t in (0.8, 0.9):
            thin = _thin_trace(_trace(40, 4, t), [("mbpp", 0), ("generated", 12), ("hh", 21)], max_points=30)
            cells[f"micro-s/dpo/1.00/{mode}/{t:.2f}"] = thin
    traces = report.traces_from_cells(cells)
    assert traces.loc[traces["step"] == 8, "domain"].eq("mbpp").all()
    assert traces.loc[traces["step"] == 9, "domain"].eq("generated").all()
    assert set(traces["domain"]) == {"mbpp", "generated", "hh"}
    fig = figures.sparsity_traces(traces)
    lines = lines_of(fig)
    static, dynamic = to_rgba(lines["static/0.8"].get_color()), to_rgba(lines["dynamic/0.8"].get_color())
    assert static != dynamic and to_rgba(lines["static/0.9"].get_color()) == static
    assert lines["static/0.8"].get_linestyle() != lines["static/0.9"].get_linestyle()  # style per target
    bounds = sorted((gid, float(line.get_xdata()[0])) for gid, line in lines.items() if gid.startswith("domain:"))
    assert bounds == [("domain:generated", 9.0), ("domain:hh", 15.0), ("domain:mbpp", 0.0)]
    texts = {t.get_text() for t in fig.axes[0].texts}
    assert {"target 0.8", "target 0.9", "mbpp", "generated", "hh"} <= texts


def test_trace_figure_without_domains_draws_no_boundaries():
    traces = report.traces_from_cells({"micro-s/dpo/1.00/dynamic/0.80": _thin_trace(_trace(20, 5, 0.8))})
    fig = figures.sparsity_traces(traces)
    assert not [g for g in lines_of(fig) if g.startswith("domain:")] and "dynamic/0.8" in lines_of(fig)


@torch.no_grad()
def test_eval_domains_are_recorded_on_a_real_sparse_model(data_dir):
    """`domain()` notes where each dataset's pass starts in the handle's trace; `_thin_trace` turns that into the
    first sparse position, so a dense-prefill prompt inside a domain does not shift the next boundary."""
    code = [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()][:80]
    tok = train_tokenizer(code[:40], vocab_size=320)
    model = build_llama(len(tok), hidden_size=32, num_layers=2, intermediate_size=128, seed=0,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    art = calibrate(model, tok, code[40:80], SparsityConfig(target_sparsity=0.5, max_length=64))
    ids = tok(code[0], return_tensors="pt")["input_ids"][:, :10]
    with apply_sparsity(model, art, "static", prefill="dense") as handle:
        ctx = EvalContext(study=None, cell=None, model=model, tok=tok, scoring=None, handle=handle)
        with domain(ctx, "mbpp"):  # a 10-token dense prompt, then 4 sparse decode steps
            model.generate(ids, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
        with domain(ctx, "hh"), handle.dense_prefix(0):  # teacher-forced, every position sparse
            model(input_ids=ids[:, :6])
        out = _thin_trace(handle.trace(), ctx.domains)
    assert ctx.domains == [("mbpp", 0), ("hh", 14)]  # raw trace positions: 10 prompt + 4 decode
    assert out["domains"] == [["mbpp", 0], ["hh", 4]] and len(out["realized_sparsity"][0]) == 10
    assert {"mbpp_realized_sparsity", "hh_realized_sparsity"} <= set(ctx.metrics)
