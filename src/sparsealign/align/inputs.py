"""The checks `align` makes before any model loads (light: no torch), so bad input fails in about a second."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from sparsealign.align.config import AlignConfig, facts
from sparsealign.data.preference import load_pairs
from sparsealign.errors import UserError

REPORT_MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def load_align_pairs(cfg: AlignConfig) -> tuple[list[Any], list[Any]]:
    train = load_pairs(cfg.data, split=cfg.data_split).pairs[: cfg.max_pairs]
    evals = load_pairs(cfg.eval_data, split=cfg.eval_split).pairs[: cfg.max_eval_pairs] if cfg.eval_data else []
    return train, evals


def check_rationales(cfg: AlignConfig, pairs: Sequence[Any], source: str) -> None:
    """A rationale method on pairs without rationales is a one-line error that names the fix."""
    method = facts(cfg.method)
    if not method.uses_rationale:
        return
    missing = sum(1 for p in pairs if not (p.rationale or "").strip())
    if missing and (cfg.missing_rationales == "error" or missing == len(pairs)):
        raise UserError(
            f"{source}: method {cfg.method} needs a rationale for every pair, but {missing} of {len(pairs)} have none",
            hint=f"run `sparsealign rationales generate --data {source}` first and align on its output, "
                 f"or use method {method.base} (or --set missing_rationales=skip for partly-rationalised data)",
        )


def check_report_to(cfg: AlignConfig) -> None:
    """A tracker asked for in `report_to` but not installed is a one-line error, not a Trainer traceback."""
    for name in cfg.report_to:
        modules = REPORT_MODULES.get(name, ())
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise UserError(f"report_to: {name} is not installed",
                            hint=f"pip install {modules[0]} (tensorboard: pip install 'sparsealign[tracking]')")


def checked_pairs(cfg: AlignConfig) -> tuple[list[Any], list[Any]]:
    """Train and eval pairs, each set checked against the method; the report_to trackers checked too."""
    pairs, eval_pairs = load_align_pairs(cfg)
    check_rationales(cfg, pairs, cfg.data)
    check_rationales(cfg, eval_pairs, cfg.eval_data or "eval pairs")
    check_report_to(cfg)
    return pairs, eval_pairs
