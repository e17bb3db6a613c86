"""Paired differences over items and seeds: a crossed bootstrap CI, an exact McNemar p for pass/fail, a sign-flip
permutation p otherwise.

Layout: a system's per-item values are an array of shape (seeds, items) -- one row per alignment seed -- or (items,)
for a system with no seed (the base model), which is broadcast across the other system's seeds.  Both systems are
scored on the same items in the same order (the pairing); seeds are paired by index (seed s of two aligned models
shares its data order), so `diff[s, i] = a[s, i] - b[s, i]`.

Resampling scheme (crossed, two-way bootstrap): each replicate draws the items with replacement AND the seeds with
replacement, independently, and takes the mean of `diff` over the drawn seeds x drawn items.  The item draw carries
item-sampling error, the seed draw carries seed-to-seed (training) variance.  With one seed it reduces to the
ordinary paired bootstrap over items, and `seeds == 1` in the result says the CI holds no seed spread.  Percentile
intervals from `DEFAULT_RESAMPLES` replicates; a proportion on its own gets a Wilson interval (`intervals.py`), never
a bootstrap, so 13/13 is not reported as [1, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy.stats import binomtest

DEFAULT_RESAMPLES = 2000
DEFAULT_PERMUTATIONS = 9999
DEFAULT_LEVEL = 0.95
_CHUNK = 250  # replicates per vectorised block
_EXACT_FLIPS = 16  # sign-flip test: enumerate all 2^n patterns up to this many items


@dataclass(frozen=True)
class PairedDifference:
    estimate: float  # mean of a - b over seeds x items
    low: float
    high: float
    n: int  # paired items
    seeds: int  # seed rows behind the CI (1 = no seed spread in it)
    p: float  # two-sided, unadjusted
    test: str  # "mcnemar-exact" | "sign-flip" | "none"
    level: float = DEFAULT_LEVEL

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def covers(self, value: float = 0.0) -> bool:
        return self.low <= value <= self.high


def as_seed_items(values: Sequence | np.ndarray, name: str = "values") -> np.ndarray:
    """(items,) -> (1, items); (seeds, items) unchanged; anything else is an error naming `name`."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected (items,) or (seeds, items) values, got shape {arr.shape}")
    return arr


def common_seeds(arrays: Mapping[str, np.ndarray]) -> int:
    """The seed count every array has, or 1 (broadcast); differing counts > 1 cannot be paired."""
    counts = {a.shape[0] for a in arrays.values()} - {1}
    if len(counts) > 1:
        raise ValueError(f"cannot pair seeds: systems have {sorted(counts)} seeds; give each the same seeds")
    items = {a.shape[1] for a in arrays.values()}
    if len(items) != 1:
        raise ValueError(f"paired statistics need the same items in every system; got item counts {sorted(items)}")
    return counts.pop() if counts else 1


@lru_cache(maxsize=4)
def crossed_weights(n_seeds: int, n_items: int, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(seed weights (B, S), item weights (B, N)): how often each seed / item is drawn in each replicate.

    Cached: every comparison over the same number of items and seeds reuses one draw (the report makes hundreds),
    which also keeps their CIs mutually consistent.
    """
    rng = np.random.default_rng(seed)
    return _draw_counts(rng, n_resamples, n_seeds), _draw_counts(rng, n_resamples, n_items)


def _draw_counts(rng: np.random.Generator, b: int, n: int) -> np.ndarray:
    """(b, n) counts of n draws with replacement from n units, per replicate (bincount: multinomial is slow)."""
    idx = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
    counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n).astype(np.float64)
    counts.flags.writeable = False
    return counts


def replicate_means(arrays: Mapping[str, np.ndarray], *, n_resamples: int = DEFAULT_RESAMPLES,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Crossed-bootstrap replicate means per system, ONE draw of seeds and items shared by all systems.

    `arrays[name]` is (S, N) or (1, N) (no seed: its seed weights are ignored).  Returns {name: (n_resamples,)}.
    """
    arrays = {k: as_seed_items(v, k) for k, v in arrays.items()}
    n_seeds = common_seeds(arrays)
    n_items = next(iter(arrays.values())).shape[1]
    ws, wi = crossed_weights(n_seeds, n_items, n_resamples, seed)
    out = {}
    for k, a in arrays.items():
        per_seed = np.einsum("bn,sn->bs", wi, a)  # (B, S or 1) item-weighted sums per seed; einsum: BLAS
        # threads thrash on a busy 2-core machine (4-10x slower than this single-threaded loop)
        if a.shape[0] == n_seeds > 1:
            out[k] = np.sum(ws * per_seed, axis=1) / (n_seeds * n_items)
        else:
            out[k] = per_seed[:, 0] / n_items
    return out


def percentile_interval(replicates: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mcnemar_exact(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Exact (binomial) McNemar p, two-sided, for paired pass/fail: under H0 the discordant pairs split 50/50."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_exact: paired arrays differ in shape ({a.shape} vs {b.shape})")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5, alternative="two-sided").pvalue)


def sign_flip_p(diffs: Sequence[float] | np.ndarray, *, n_resamples: int = DEFAULT_PERMUTATIONS,
                seed: int = 0) -> float:
    """Two-sided paired permutation p of mean(diffs) = 0: each item's difference keeps or flips its sign under H0.

    Exact (all 2^n sign patterns) for n <= 16, else Monte Carlo with p = (1 + #{|null| >= |obs|}) / (1 + B).
    Written out rather than scipy's `permutation_test`, which builds this null by argsort and is ~100x slower.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if not np.any(d):
        return 1.0
    n = d.size
    obs = abs(d.sum()) * (1 - 1e-9)  # sums, not means: same test; the slack absorbs float reassociation
    if n <= _EXACT_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)  # every sign pattern, (2^n, n)
        return float(np.mean(np.abs(signs @ d) >= obs))
    rng = np.random.default_rng(seed)
    hits, total = 0, float(d.sum())
    for start in range(0, n_resamples, _CHUNK):
        b = min(_CHUNK, n_resamples - start)
        raw = np.frombuffer(rng.bytes(b * ((n + 7) // 8)), dtype=np.uint8).reshape(b, -1)
        flipped = np.unpackbits(raw, axis=1, count=n).astype(np.float64)  # 1 = this item's sign flipped
        hits += int(np.sum(np.abs(total - 2.0 * np.einsum("bn,n->b", flipped, d)) >= obs))
    return float((1 + hits) / (1 + n_resamples))


def is_binary(arr: np.ndarray) -> bool:
    return bool(np.all((arr == 0) | (arr == 1)))


def paired_difference(a: Sequence | np.ndarray, b: Sequence | np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES,
                      level: float = DEFAULT_LEVEL, seed: int = 0, test: bool = True) -> PairedDifference:
    """mean(a - b) on shared items (and seeds) with a crossed-bootstrap CI and a two-sided p (NaN with test=False).

    p: exact McNemar when both are pass/fail with one seed (the textbook paired test); otherwise the sign-flip
    permutation test on each item's seed-averaged difference (valid for any metric, and for pooled comparisons).
    """
    arrays = {"a": as_seed_items(a, "a"), "b": as_seed_items(b, "b")}
    n_seeds = common_seeds(arrays)
    diff = arrays["a"] - arrays["b"]  # broadcasts a seedless system over the other's seeds
    n_items = diff.shape[1]
    estimate = float(diff.mean())
    if n_items < 2 or n_resamples <= 0:
        return PairedDifference(estimate, estimate, estimate, n_items, n_seeds, float("nan"), "none", level)
    reps = replicate_means({"d": diff}, n_resamples=n_resamples, seed=seed)["d"]
    low, high = percentile_interval(reps, level)
    if not test:
        p, test_name = float("nan"), "none"
    elif n_seeds == 1 and is_binary(arrays["a"]) and is_binary(arrays["b"]):
        p, test_name = mcnemar_exact(arrays["a"][0], arrays["b"][0]), "mcnemar-exact"
    else:
        p, test_name = sign_flip_p(diff.mean(axis=0), seed=seed), "sign-flip"
    return PairedDifference(estimate, low, high, n_items, n_seeds, p, test_name, level)


def bound_of(values: Sequence[float] | np.ndarray, *, lower: float = 0.0, upper: float = 1.0) -> str | None:
    """"floor" / "ceiling" when every value sits at the metric's lower / upper bound, else None."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return None
    if np.all(arr == lower):
        return "floor"
    if np.all(arr == upper):
        return "ceiling"
    return None
