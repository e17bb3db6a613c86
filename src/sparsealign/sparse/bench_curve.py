"""Quality versus sparsity on a real model: KL(dense || sparse) per token and next-token top-1 agreement.

    sparsity_curve(model, tokenizer, calib_texts, eval_texts, sparsities, modes) -> {"rows": [...], ...}

For each target sparsity the model is calibrated once (static per-layer quantile thresholds, `calibrate`), then
every mode is applied to the same held-out texts with `evaluate_sparsity` (teacher-forced, batch 1; prefill policy
"sparse" so every position is a sparse position unless `prompt_tokens` > 0).  static = calibrated thresholds,
dynamic = the online controller starting from them (fresh state per mode and sparsity).

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

OPENINGS = ("Once upon a time", "One day", "Lily and Tom", "There was a little", "The sun was", "Ben had a",
            "In a small town", "Mia wanted to")
FIELDS = ("mode", "sparsity", "realized_sparsity", "kl_mean", "kl_p95", "top1_agreement", "flops_skipped",
          "tokens")


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
                   sparsities: Sequence[float], modes: Sequence[str] = ("static", "dynamic"), *,
                   prompt_tokens: int = 0, max_length: int = 256, log=None) -> dict[str, Any]:
    from sparsealign.sparse.calibration import calibrate, record_activations
    from sparsealign.sparse.config import SparsityConfig
    from sparsealign.sparse.quality import evaluate_sparsity

    log = log or (lambda msg: None)
    rec = record_activations(model, tokenizer, calib_texts, max_length=max_length, max_tokens=1 << 20)
    rows = []
    for s in sparsities:
        art = calibrate(model, tokenizer, calib_texts, SparsityConfig(target_sparsity=s, max_length=max_length),
                        recording=rec)
        for mode in modes:
            res = evaluate_sparsity(model, tokenizer, eval_texts, art, mode,
                                    "dense" if prompt_tokens else "sparse", prompt_tokens=prompt_tokens,
                                    max_length=max_length)
            row = {k: res.get(k) for k in FIELDS}
            row.update(mode=mode, sparsity=s, layer_sparsity=[r.get("realized_sparsity") for r in res["layers"]])
            rows.append(row)
            log(f"{mode:>8} s={s:.2f}: realized {row['realized_sparsity']:.3f}, KL {row['kl_mean']:.4f} nats/token, "
                f"top-1 agreement {row['top1_agreement']:.3f}")
    return {"rows": rows, "calibration_texts": len(calib_texts), "eval_texts": len(eval_texts),
            "calibration_tokens": rec.n_all, "prompt_tokens": prompt_tokens,
            "prefill": "dense" if prompt_tokens else "sparse"}


def plot_curve(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Two panels: KL (log scale) and top-1 agreement versus realized sparsity, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsealign.io import atomic_path

    fig, (ax_kl, ax_ag) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode in dict.fromkeys(r["mode"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["mode"] == mode]
        xs = [r["realized_sparsity"] for r in rows]
        ax_kl.plot(xs, [max(r["kl_mean"], 1e-7) for r in rows], marker="o", label=mode)
        ax_ag.plot(xs, [r["top1_agreement"] for r in rows], marker="o", label=mode)
    ax_kl.set(yscale="log", xlabel="realized FFN sparsity", ylabel="KL(dense || sparse) [nats/token]")
    ax_ag.set(xlabel="realized FFN sparsity", ylabel="next-token top-1 agreement", ylim=(0, 1.02))
    for ax in (ax_kl, ax_ag):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_curve(result: dict[str, Any], out_dir: str | Path, title: str = "") -> list[Path]:
    """curve.json, curve.csv and curve.png in out_dir (each written atomically)."""
    import csv
    import io

    from sparsealign.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["rows"])
    return [atomic_write_json(out_dir / "curve.json", result), atomic_write_text(out_dir / "curve.csv", buf.getvalue()),
            plot_curve(result, out_dir / "curve.png", title)]
