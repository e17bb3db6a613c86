"""The study report: results.parquet, figures, report.md and a self-contained report.html that renders in Chromium.

The results table is synthetic but shaped like a real study (3 sizes, 4 methods, 3 modes, 4 sparsities, nested
pair subsets, per-item outcomes turned into Wilson CIs; annotation savings from `sparsealign.stats.annotation`).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sparsealign.report import render as report
from sparsealign.report import scaling
from sparsealign.report.items import ItemStore
from sparsealign.stats.annotation import annotation_savings
from sparsealign.stats.intervals import wilson_interval

SIZES = {"micro-xs": 98_464, "micro-s": 328_128, "micro-m": 1_311_872}
METHODS = ["base", "dpo", "orpo", "rdpo"]
SPARSITIES = [0.3, 0.5, 0.7, 0.9]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def synthetic_study(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, traces = [], []
    n_items = {"generated": 60, "mbpp": 100, "hh-rlhf": 200}
    for i, (size, params) in enumerate(SIZES.items()):
        for method in METHODS:
            lift = 0.0 if method == "base" else 0.05 + 0.03 * (method == "rdpo")
            for mode, sparsities in [("dense", [0.0]), ("static", SPARSITIES), ("dynamic", SPARSITIES)]:
                for s in sparsities:
                    drop = max(0.0, s - 0.4) * (0.9 if mode == "static" else 0.5)
                    probs = {"generated": 0.15 + 0.2 * i + lift - drop, "mbpp": 0.01 * i,
                             "hh-rlhf": 0.52 + 0.04 * i + lift - drop / 3}
                    for dataset, p in probs.items():
                        metric = "preference_accuracy" if dataset == "hh-rlhf" else "pass@1"
                        items = rng.random(n_items[dataset]) < np.clip(p, 0, 1)
                        ci = wilson_interval(int(items.sum()), len(items))
                        v, lo, hi = ci.estimate, ci.low, ci.high
                        rows.append(dict(size=size, params=params, method=method, mode=mode, target_sparsity=s,
                                         metric=metric, value=v, ci_low=lo, ci_high=hi, n=len(items),
                                         dataset=dataset, subset_fraction=1.0, n_pairs=900))
                    rows.append(dict(size=size, params=params, method=method, mode=mode, target_sparsity=s,
                                     metric="divergence", value=0.3 - 0.05 * i - lift + drop, dataset="hh-rlhf"))
                    rows.append(dict(size=size, params=params, method=method, mode=mode, target_sparsity=s,
                                     metric="tokens_per_s", value=900 / (i + 1) * (1 + s), dataset="all"))
                    rows.append(dict(size=size, params=params, method=method, mode=mode, target_sparsity=s,
                                     metric="realized_sparsity", value=0.35 if mode == "dense" else s - 0.02,
                                     dataset="all"))  # dense: its natural (ReLU) sparsity
                    if mode != "dense":
                        for step in range(0, 40, 4):
                            realized = s if mode == "dynamic" else s - 0.15 * np.exp(-step / 10) + 0.05
                            traces.append(dict(size=size, method=method, mode=mode, target_sparsity=s, step=step,
                                               realized_sparsity=realized))
        # nested subsets of the 900 pairs, dense only, for annotation efficiency
        items = {}
        for method in METHODS[1:]:
            for frac, n_pairs in [(1 / 9, 100), (1 / 3, 300), (1.0, 900)]:
                p = 0.52 + 0.04 * i + 0.06 * np.log(n_pairs / 100) / np.log(9) * (2 if method == "rdpo" else 1)
                items[(method, n_pairs)] = rng.random(200) < p
                if frac < 1:
                    rows.append(dict(size=size, params=params, method=method, mode="dense", target_sparsity=0.0,
                                     metric="preference_accuracy", value=items[(method, n_pairs)].mean(),
                                     dataset="hh-rlhf", subset_fraction=frac, n_pairs=n_pairs))
        savings = annotation_savings(items, reference="dpo", n_resamples=200, seed=2)
        rows += scaling.annotation_rows(savings, size=size, params=params, dataset="hh-rlhf",
                                        unit="pairs").to_dict("records")
    return pd.DataFrame(rows), pd.DataFrame(traces)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    df, traces = synthetic_study()
    paths = report.write_report(df, out, traces=traces, title="synthetic study", notes=["synthetic data for the test"],
                                config={"seed": 0, "family": {"preset": "micro"}})
    return out, paths, df


def test_report_files_and_parquet_roundtrip(built):
    out, paths, df = built
    back = pd.read_parquet(paths["results"])
    assert len(back) == len(df)
    assert set(report.RESULT_COLUMNS) <= set(back.columns)
    pngs = sorted(p.name for p in paths["figures"].glob("*.png"))
    # every figure kind the issue names is present
    for needle in ["acc_vs_sparsity_pass_1_generated", "acc_vs_sparsity_preference_accuracy_hh-rlhf",
                   "divergence_vs_size_hh-rlhf", "realized_sparsity_traces", "speed_vs_sparsity",
                   "annotation_efficiency_hh-rlhf"]:
        assert any(needle in p for p in pngs), (needle, pngs)
    md = paths["markdown"].read_text()
    for png in pngs:
        assert f"(figures/{png})" in md
    assert "## Annotation efficiency" in md
    # without per-item data nothing paired can be claimed, and the report says so instead of inventing findings
    assert md.index("## Findings") < md.index("## Caveats") < md.index("## Figures")
    assert "not measurable" in md and "## Critical sparsity" not in md
    assert "## Configuration" in md and "preset: micro" in md
    assert not list(out.glob(".*tmp")), "no temporary files left behind"


def test_generated_and_mbpp_never_pooled(built):
    _, paths, _ = built
    names = [p.name for p in paths["figures"].glob("*pass_1*")]
    assert names and all(("generated" in n) != ("mbpp" in n) for n in names)


def test_html_is_self_contained(built):
    _, paths, _ = built
    text = paths["html"].read_text()
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', text)
    assert len(srcs) == len(list(paths["figures"].glob("*.png")))
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:|//|file:)', text) and "<script" not in text


def test_cell_keyed_traces_and_items_from_the_study():
    traces = report.traces_from_cells({
        "micro-s/dpo/1.00/dynamic/0.70": {"realized_sparsity": [[0.6, 0.7, 0.8], [0.8, 0.7, 0.6]], "step": 2},
        "micro-s/dpo/0.33/dynamic/0.70": {"realized_sparsity": [[0.1]], "step": 1},  # subset cells: not plotted
    })
    assert traces["step"].tolist() == [0, 2, 4] and np.allclose(traces["realized_sparsity"], 0.7)
    assert set(traces["mode"]) == {"dynamic"} and set(traces["target_sparsity"]) == {0.7}
    base = np.random.default_rng(0).random(300)
    curve = {("dpo", 0.11): 0.55, ("dpo", 0.33): 0.60, ("dpo", 1.0): 0.65, ("rdpo", 0.11): 0.60,
             ("rdpo", 0.33): 0.65, ("rdpo", 1.0): 0.70}
    items = {f"micro-s/{m}/{f:.2f}/dense/0.00": {"hh_correct": (base < p).astype(float).tolist()}
             for (m, f), p in curve.items()}
    items["micro-s/rdpo/1.00/static/0.50"] = {"hh_correct": [1.0] * 300}  # sparse cells are not training curves
    rows = scaling.annotation_table(ItemStore(items), {"micro-s": 328_128}, n_boot=100)
    rdpo = rows[rows["method"] == "rdpo"].iloc[0]
    assert rdpo["metric"] == "annotation_saving" and rdpo["dataset"] == "hh" and rdpo["params"] == 328_128
    assert rdpo["value"] == pytest.approx(3.0, rel=0.1) and rdpo["note"].startswith("reached")


def test_schema_error_names_missing_columns(tmp_path):
    df, _ = synthetic_study()
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['dataset'\]"):
        report.write_report(df.drop(columns=["dataset"]), tmp_path)
    assert not (tmp_path / "report.html").exists()


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)")
def test_report_renders_in_headless_chromium(built, tmp_path):
    from PIL import Image

    _, paths, _ = built
    url = paths["html"].resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    # the rendered DOM holds every figure, each a decodable PNG with real content
    srcs = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', dom.stdout)
    assert len(srcs) == len(list(paths["figures"].glob("*.png"))) >= 6
    for src in srcs:
        img = Image.open(io.BytesIO(base64.b64decode(src)))
        assert img.format == "PNG" and img.size[0] > 300
    # screenshot: the figures paint coloured lines (tab10), which plain black-on-white text never does
    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,6000", url], tmp_path)
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    rgb = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colourful = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    assert colourful.mean() > 0.002, colourful.mean()
    assert not [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
