"""Activation profile of the FFN: per layer and neuron, how often it fires and how large it is.

Firing = |act(gate x)| > t_l (the layer's calibrated threshold; 0 = ReLU's own zeros).  Saved as
`profile.safetensors` (per-layer [I] vectors) + `profile.json` (summary) + `profile.png` (sorted firing frequency
per layer on log-log axes: a straight-ish falling line is PowerInfer's power law — few hot neurons fire on almost
every token, the long cold tail rarely).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sparsealign.io import atomic_path, atomic_write_json


def neuron_stats(abs_a: torch.Tensor, threshold: float, abs_h_mean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """abs_a [N, I] -> per-neuron firing frequency, mean and max |a| (and mean |a * up| when given)."""
    out = {"frequency": (abs_a > threshold).float().mean(0), "mean_abs_a": abs_a.mean(0),
           "max_abs_a": abs_a.max(0).values}
    if abs_h_mean is not None:
        out["mean_abs_h"] = abs_h_mean.float()
    return out


def hot_cold_summary(frequency: torch.Tensor, hot_fraction: float) -> dict[str, float]:
    """Share of neurons that are hot (fire on >= hot_fraction of tokens), and the activation mass they carry
    (share of all firings), plus the frequency-rank share needed to cover 80% of firings (power-law concentration)."""
    f = frequency.sort(descending=True).values
    total = float(f.sum()) or 1.0
    hot = f >= hot_fraction
    cum = f.cumsum(0) / total
    n80 = int((cum < 0.8).sum()) + 1
    return {"hot_neurons": float(hot.float().mean()), "hot_firing_share": float(f[hot].sum()) / total,
            "neurons_for_80pct_firings": n80 / f.numel(), "mean_frequency": float(f.mean())}


def build_profile(rec, thresholds: list[float], hot_fraction: float) -> dict[str, Any]:
    """Per-layer stats from a calibration `Recording` at the given thresholds."""
    layers, tensors = [], {}
    for i, name in enumerate(rec.layer_names):
        stats = neuron_stats(rec.a[i].abs(), thresholds[i], rec.abs_h_sum[i] / max(rec.n_all, 1))
        for key, value in stats.items():
            tensors[f"{i}.{key}"] = value.contiguous()
        layers.append({"layer": name, "threshold": thresholds[i], **hot_cold_summary(stats["frequency"], hot_fraction)})
    return {"layers": layers, "tensors": tensors, "hot_fraction": hot_fraction, "tokens": int(rec.a[0].shape[0])}


def save_profile(profile: dict[str, Any], out_dir: str | Path, *, plot: bool = True) -> list[Path]:
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with atomic_path(out_dir / "profile.safetensors") as tmp:
        save_file(profile["tensors"], str(tmp))
    written = [out_dir / "profile.safetensors",
               atomic_write_json(out_dir / "profile.json", {k: v for k, v in profile.items() if k != "tensors"})]
    if plot:
        written.append(plot_profile(profile, out_dir / "profile.png"))
    return written


def plot_profile(profile: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, row in enumerate(profile["layers"]):
        f = profile["tensors"][f"{i}.frequency"].sort(descending=True).values.clamp_min(1e-6)
        ax.loglog(torch.arange(1, f.numel() + 1), f, label=row["layer"].replace(".mlp", ""), lw=1)
    ax.axhline(profile["hot_fraction"], color="k", ls=":", lw=0.8, label="hot cut-off")
    ax.set_xlabel("neuron rank (by firing frequency)")
    ax.set_ylabel("firing frequency (|a| > t)")
    ax.set_title(f"FFN activation profile ({profile['tokens']} tokens)")
    return _save(fig, ax, path, legend=len(profile["layers"]) <= 12)


def plot_trace(trace: dict[str, Any], path: str | Path, *, target: float | None = None, window: int = 16) -> Path:
    """Per-layer realized sparsity over processed positions (moving average of `window`), from `handle.trace()`;
    dense prompt positions are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = torch.tensor([not p for p in trace["prefill"]], dtype=torch.bool)
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, series in zip(trace["layers"], trace["realized_sparsity"], strict=True):
        s = torch.tensor(series)[keep[: len(series)]]
        if s.numel() >= window:
            s = s.unfold(0, window, 1).mean(-1)
        ax.plot(s.numpy(), lw=0.8, label=name.replace(".mlp", ""))
    if target is not None:
        ax.axhline(target, color="k", ls=":", lw=0.8, label="target")
    ax.set_xlabel("sparse position (tokens, in processing order)")
    ax.set_ylabel(f"realized sparsity (moving avg {window})")
    return _save(fig, ax, path, legend=len(trace["layers"]) <= 12)


def _save(fig, ax, path: str | Path, *, legend: bool) -> Path:
    """Legend (when it stays readable), tight layout, atomic PNG write, close."""
    import matplotlib.pyplot as plt

    if legend:
        ax.legend(fontsize=6)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)
