"""Quality versus sparsity on a real model: KL(dense || sparse) per token and next-token top-1 agreement.

    sparsity_curve(model, tokenizer, calib_texts, eval_texts, sparsities, modes, variants=...) -> {"rows": [...]}

For each target sparsity and site variant (e.g. intermediate = CATS on |SiLU(gate)|, ffn_input = TEAL on the FFN's
hidden-state input, or both) the model is calibrated once, then every mode is applied to the same held-out texts
with `evaluate_sparsity` (teacher-forced, batch 1; prefill policy "sparse" so every position is a sparse position
unless `prompt_tokens` > 0).  static = calibrated thresholds, dynamic = the online controller starting from them
(fresh per text).  KL carries a bootstrap CI over texts, top-1 agreement a Wilson CI over positions.

Held-out data: when no text of the model's domain is on disk (stories260K was trained on TinyStories, which we do
not have), `sample_texts` lets the dense model write it: temperature-1 samples from story openings, one seed set
for calibration and a disjoint one for evaluation.  That measures how faithfully the sparse model reproduces the
dense model on the dense model's own distribution, which is what KL(dense || sparse) asks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sparsealign.io import atomic_path, atomic_write_json, atomic_write_text
from sparsealign.sparse.bench.quality import dense_logits, evaluate_sparsity
from sparsealign.sparse.calibration.calibrate import calibrate, record_activations, tokenize
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.modes import DYNAMIC, STATIC
from sparsealign.stats.intervals import wilson_interval

OPENINGS = ("Once upon a time", "One day", "Lily and Tom", "There was a little", "The sun was", "Ben had a",
            "In a small town", "Mia wanted to")
FIELDS = ("eval_domain", "calib_domain", "sites", "mode", "sparsity", "realized_sparsity", "kl_mean", "kl_ci_low",
          "kl_ci_high", "kl_p95", "top1_agreement", "top1_ci_low", "top1_ci_high", "flops_skipped", "tokens")


def kl_interval(text_sums: Sequence[float], text_tokens: Sequence[int], seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the per-token KL mean (sum / tokens), resampling whole texts."""
    import numpy as np
    from scipy.stats import bootstrap

    sums, ns = np.asarray(text_sums, dtype=float), np.asarray(text_tokens, dtype=float)
    if len(sums) < 2 or float(sums.std()) == 0.0:
        est = float(sums.sum() / ns.sum())
        return est, est
    res = bootstrap((sums, ns), lambda s, n, axis=-1: s.sum(axis) / n.sum(axis), paired=True, vectorized=True,
                    n_resamples=1000, method="percentile", random_state=seed)
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def curve_row(res: dict[str, Any], sites: Sequence[str]) -> dict[str, Any]:
    """One row from an `evaluate_sparsity` result: the variant's realized sparsity (mean over its sites), KL with
    a text-bootstrap CI, top-1 agreement with a Wilson CI over positions, per-site and per-layer sparsity."""

    per_site = {s: res["sites"].get(s, {}).get("realized_sparsity", 0.0) for s in sites if s != "intermediate"}
    if "intermediate" in sites:
        per_site["intermediate"] = res.get("realized_sparsity")
    kl_low, kl_high = kl_interval(res["kl_text_sums"], res["text_tokens"])
    top1 = wilson_interval(res["top1_matches"], res["tokens"])
    return {"realized_sparsity": sum(per_site.values()) / len(per_site), "site_sparsity": per_site,
            "kl_mean": res["kl_mean"], "kl_ci_low": kl_low, "kl_ci_high": kl_high, "kl_p95": res["kl_p95"],
            "top1_agreement": res["top1_agreement"], "top1_ci_low": top1.low, "top1_ci_high": top1.high,
            "flops_skipped": res.get("flops_skipped"), "tokens": res["tokens"],
            "layer_sparsity": [r.get("realized_sparsity") for r in res["layers"]]}


@torch.no_grad()
def sample_texts(model: nn.Module, tokenizer, n: int, *, new_tokens: int = 96, seed: int = 0,
                 temperature: float = 1.0) -> list[str]:
    """n texts sampled from the dense model (one left-padded batch), openings cycled from OPENINGS."""
    prompts = [OPENINGS[i % len(OPENINGS)] for i in range(n)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    torch.manual_seed(seed)
    out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, max_new_tokens=new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in out]


def sparsity_curve(model: nn.Module, tokenizer, calib_texts: Sequence[str], eval_texts: Sequence[str],
                   sparsities: Sequence[float], modes: Sequence[str] = (STATIC, DYNAMIC), *,
                   variants: Sequence[Sequence[str]] = (("intermediate",),), prompt_tokens: int = 0,
                   max_length: int = 256, max_tokens: int = 1 << 20, log=None) -> dict[str, Any]:
    """Rows for every (sparsity, variant, mode): calibrate the variant's sites at the target on `calib_texts`
    (one recording reused), evaluate teacher-forced on `eval_texts` against dense logits computed once."""

    log = log or (lambda msg: None)
    all_sites = sorted({s for v in variants for s in v})
    rec = record_activations(model, tokenizer, calib_texts, max_length=max_length, max_tokens=max_tokens,
                             sites=all_sites)
    dense = dense_logits(model, tokenize(tokenizer, eval_texts, max_length))
    prefill = "dense" if prompt_tokens else "sparse"
    rows = []
    for s in sparsities:
        for sites in variants:
            cfg = SparsityConfig(target_sparsity=s, max_length=max_length, sites=list(sites))
            art = calibrate(model, tokenizer, calib_texts, cfg, recording=rec)
            for mode in modes:
                res = evaluate_sparsity(model, tokenizer, eval_texts, art, mode, prefill, prompt_tokens=prompt_tokens,
                                        max_length=max_length, dense=dense)
                row = {"mode": mode, "sparsity": s, "sites": "+".join(sites), **curve_row(res, sites)}
                rows.append(row)
                log(f"{row['sites']:>24} {mode:>8} s={s:.2f}: realized {row['realized_sparsity']:.3f}, KL "
                    f"{row['kl_mean']:.4f} [{row['kl_ci_low']:.4f}, {row['kl_ci_high']:.4f}] nats/token, top-1 "
                    f"{row['top1_agreement']:.3f}")
    return {"rows": rows, "calibration_texts": len(calib_texts), "eval_texts": len(eval_texts),
            "calibration_tokens": rec.n_all, "prompt_tokens": prompt_tokens, "prefill": prefill}


def plot_curve(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Two panels: KL (log scale) and top-1 agreement versus realized sparsity, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    fig, (ax_kl, ax_ag) = plt.subplots(1, 2, figsize=(9, 3.6))
    for key in dict.fromkeys(_series(r) for r in result["rows"]):
        rows = [r for r in result["rows"] if _series(r) == key]
        xs = [r["realized_sparsity"] for r in rows]
        ax_kl.plot(xs, [max(r["kl_mean"], 1e-7) for r in rows], marker="o", label=key, lw=1)
        ax_ag.plot(xs, [r["top1_agreement"] for r in rows], marker="o", label=key, lw=1)
    ax_kl.set(yscale="log", xlabel="realized FFN sparsity", ylabel="KL(dense || sparse) [nats/token]")
    ax_ag.set(xlabel="realized FFN sparsity", ylabel="next-token top-1 agreement", ylim=(0, 1.02))
    for ax in (ax_kl, ax_ag):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _series(row: dict[str, Any]) -> str:
    """Plot label: eval domain (when several), sites (when not the default), mode."""
    parts = [row.get("eval_domain"), None if row.get("sites") == "intermediate" else row.get("sites"), row["mode"]]
    return " ".join(p for p in parts if p)


def write_curve(result: dict[str, Any], out_dir: str | Path, title: str = "") -> list[Path]:
    """curve.json, curve.csv and curve.png in out_dir (each written atomically)."""
    import csv
    import io


    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["rows"])
    return [atomic_write_json(out_dir / "curve.json", result), atomic_write_text(out_dir / "curve.csv", buf.getvalue()),
            plot_curve(result, out_dir / "curve.png", title)]
