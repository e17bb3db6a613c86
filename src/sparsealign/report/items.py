"""Per-item study results for paired statistics: the `items.json` of every eval cell, stacked over seeds.

The study writes `runs/<name>/eval/<size>/<method>/f<subset>/<mode>/<target>/items.json` (an optional `s<seed>`
path segment, anywhere after the size, marks an alignment seed), holding per-item arrays named
`<dataset>_<kind>`: `mbpp_passed` / `generated_passed` (task passed, 0/1), `hh_correct` / `hh_margin` (held-out pair
ranked right, implicit-reward margin), ... in the same item order for every cell of a size.  `ItemStore` indexes them
by cell and stacks seeds into (seeds, items) arrays, the layout `stats.paired` takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# results-table metric -> the per-item array behind it (other metrics: the array named after the metric itself)
ITEM_KIND = {"pass@1": "passed", "reward_accuracy": "correct", "mean_margin": "margin",
             "preference_divergence": "divergence", "implicit_reward_accuracy": "implicit_correct",
             "implicit_mean_margin": "implicit_margin"}
BOUNDED = {"passed", "correct", "implicit_correct"}  # 0/1 items: a mean at 0 or 1 in every cell is a floor / ceiling
# rewards relative to the base model (beta log pi/pi_base): the base model's own is 0 on every item, so it has no
# cells of them and a contrast against it reads 0 (`study.results.relative_to_base`)
RELATIVE_TO_BASE = {"implicit_correct", "implicit_margin"}
_SEED = re.compile(r"^s(?:eed)?(\d+)$")


def item_kind(metric: str) -> str:
    return ITEM_KIND.get(metric, metric)


def parse_cell_key(key: str) -> dict | None:
    """`size/method/f<subset>/mode/target` (+ optional `s<seed>` segment) -> cell fields, or None."""
    parts = key.split("/")
    seeds = [(i, _SEED.match(p)) for i, p in enumerate(parts) if i > 0 and _SEED.match(p)]
    seed = int(seeds[0][1].group(1)) if seeds else 0
    parts = [p for i, p in enumerate(parts) if not (seeds and i == seeds[0][0])]
    if len(parts) != 5:
        return None
    try:
        return {"size": parts[0], "method": parts[1], "subset_fraction": round(float(parts[2].removeprefix("f")), 3),
                "mode": parts[3], "target_sparsity": round(float(parts[4]), 2), "seed": seed}
    except ValueError:
        return None


@dataclass(frozen=True)
class CellKey:
    size: str
    method: str
    subset: float
    mode: str
    target: float


class ItemStore:
    """(cell, dataset, kind) -> (seeds, items) array; seeds sorted, each seed's row in the study's item order."""

    def __init__(self, items: Mapping[str, Mapping[str, Sequence[float]]] | None):
        rows: dict[tuple[CellKey, str], dict[int, np.ndarray]] = {}
        for key, arrays in (items or {}).items():
            cell = parse_cell_key(key)
            if cell is None:
                continue
            ck = CellKey(cell["size"], cell["method"], cell["subset_fraction"], cell["mode"], cell["target_sparsity"])
            for name, values in arrays.items():
                rows.setdefault((ck, name), {})[cell["seed"]] = np.asarray(values, dtype=np.float64)
        self._arrays: dict[tuple[CellKey, str], np.ndarray] = {}
        for k, by_seed in rows.items():
            lengths = {a.size for a in by_seed.values()}
            if len(lengths) == 1 and lengths != {0}:
                self._arrays[k] = np.stack([by_seed[s] for s in sorted(by_seed)])

    def __bool__(self) -> bool:
        return bool(self._arrays)

    def get(self, cell: CellKey, dataset: str, metric: str) -> np.ndarray | None:
        return self._arrays.get((cell, f"{dataset}_{item_kind(metric)}"))

    def cells(self, dataset: str, metric: str) -> list[CellKey]:
        name = f"{dataset}_{item_kind(metric)}"
        return sorted((c for c, n in self._arrays if n == name), key=lambda c: (c.size, c.method, c.subset, c.mode,
                                                                                 c.target))

    def datasets(self, metric: str) -> list[str]:
        suffix = f"_{item_kind(metric)}"
        return sorted({n.removesuffix(suffix) for _, n in self._arrays if n.endswith(suffix)})

    def sizes(self) -> list[str]:
        return sorted({c.size for c, _ in self._arrays})

    def targets(self, mode: str) -> list[float]:
        return sorted({c.target for c, _ in self._arrays if c.mode == mode})


def broadcast_pool(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Mean of several (seeds, items) arrays over the same items; a one-row (seedless) array is repeated over the
    others' seeds.  None when items or seed counts disagree (they cannot be paired)."""
    if not arrays:
        return None
    seeds = {a.shape[0] for a in arrays} - {1}
    if len(seeds) > 1 or len({a.shape[1] for a in arrays}) != 1:
        return None
    s = seeds.pop() if seeds else 1
    return np.mean([np.broadcast_to(a, (s, a.shape[1])) for a in arrays], axis=0)


def concat_items(arrays: Sequence[np.ndarray]) -> np.ndarray | None:
    """Join per-size (seeds, items) arrays along items (each size's items are its own units)."""
    if not arrays:
        return None
    seeds = {a.shape[0] for a in arrays} - {1}
    if len(seeds) > 1:
        return None
    s = seeds.pop() if seeds else 1
    return np.concatenate([np.broadcast_to(a, (s, a.shape[1])) for a in arrays], axis=1)
