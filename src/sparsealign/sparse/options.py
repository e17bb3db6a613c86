"""`--sparsity DIR --mode M --prefill P`: the same three flags on every verb that runs a model (click + stdlib only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

MODES = ("static", "dynamic", "predictor")
PREFILLS = ("dense", "sparse")


def sparsity_options(default_mode: str = "dynamic", *, prefix: str = "", what: str = "the model") -> Callable:
    """Add --{prefix}sparsity, --{prefix}mode, --{prefix}prefill (kwargs {p}sparsity, {p}mode, {p}prefill)."""
    p = prefix.replace("-", "_")
    options = [
        click.option(f"--{prefix}sparsity", f"{p}sparsity", default=None, metavar="DIR",
                     help=f"Run {what} under activation sparsity: an artifacts directory from `sparsify calibrate` "
                          "(calibrated on this very model; dense without it)."),
        click.option(f"--{prefix}mode", f"{p}mode", type=click.Choice(MODES), default=default_mode,
                     show_default=True, help="With --sparsity: static thresholds, dynamic controller, or "
                                             "predictor active sets."),
        click.option(f"--{prefix}prefill", f"{p}prefill", type=click.Choice(PREFILLS), default="dense",
                     show_default=True, help="With --sparsity: prompt positions dense or sparse (decode is sparse)."),
    ]

    def deco(fn: Callable) -> Callable:
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return deco


def sparsity_spec(sparsity: str | None, mode: str, prefill: str) -> dict[str, Any] | None:
    """The typed config's `sparsity` field value (validated by SparsitySpec there); None = dense."""
    return None if sparsity is None else {"artifacts": sparsity, "mode": mode, "prefill": prefill}
