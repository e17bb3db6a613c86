"""`--sparsity DIR --mode M --prefill P`: the same three flags on every verb that runs a model (click + stdlib only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from sparsealign.sparse.modes import DYNAMIC, MODES, facts, mode_help

PREFILLS = ("dense", "sparse")


def _known_mode(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    facts(value, where=param.opts[0])  # an unknown mode: one line naming the flag and the declared modes
    return value


def mode_option(flag: str = "--mode", dest: str = "mode", *, default: str = DYNAMIC, help: str = "") -> Callable:
    """`--mode M`: one of the modes declared in `sparse.modes` (choices and help read from its table)."""
    return click.option(flag, dest, default=default, show_default=True, metavar=f"[{'|'.join(MODES)}]",
                        callback=_known_mode, help=help or f"{mode_help()}.")


def sparsity_options(default_mode: str = DYNAMIC, *, prefix: str = "", what: str = "the model") -> Callable:
    """Add --{prefix}sparsity, --{prefix}mode, --{prefix}prefill (kwargs {p}sparsity, {p}mode, {p}prefill)."""
    p = prefix.replace("-", "_")
    options = [
        click.option(f"--{prefix}sparsity", f"{p}sparsity", default=None, metavar="DIR",
                     help=f"Run {what} under activation sparsity: an artifacts directory from `sparsify calibrate` "
                          "(calibrated on this very model; dense without it)."),
        mode_option(f"--{prefix}mode", f"{p}mode", default=default_mode, help=f"With --sparsity: {mode_help()}."),
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
