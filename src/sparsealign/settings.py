"""Where things live: the data directory (shared datasets) and the runs directory.

Data directory precedence: explicit flag > $SPARSEALIGN_DATA_DIR > config value > ../shared/data (development and CI:
the checkout has ../shared beside it).  Relative dataset names such as `hh-rlhf/helpful-base/test.jsonl.gz` resolve
against it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sparsealign.errors import UserError

DATA_DIR_ENV = "SPARSEALIGN_DATA_DIR"
RUNS_DIR_ENV = "SPARSEALIGN_RUNS_DIR"
CACHE_DIR_ENV = "SPARSEALIGN_CACHE_DIR"
_REPO_ROOT = Path(__file__).resolve().parents[2]  # src/sparsealign/settings.py -> checkout root (editable install)

# Where each shared file comes from when it is missing locally (so the error can say which hub id provides it).
HUB_SOURCES = {
    "hh-rlhf": "Anthropic/hh-rlhf (datasets hub id) or github.com/anthropics/hh-rlhf",
    "mbpp": "google-research-datasets/mbpp (datasets hub id)",
    "ultrafeedback_binarized": "HuggingFaceH4/ultrafeedback_binarized or trl-lib/ultrafeedback_binarized",
    "orca_dpo_pairs": "Intel/orca_dpo_pairs",
    "models/stories260K": "karpathy/tinyllamas (stories260K.bin, tok512.bin)",
}


def _candidates() -> list[Path]:
    return [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]


def data_dir(explicit: str | os.PathLike[str] | None = None, *, config_value: str | None = None) -> Path:
    """Resolve the data directory. Does not require it to exist (a missing file is reported when it is read)."""
    for value in (explicit, os.environ.get(DATA_DIR_ENV), config_value):
        if value:
            return Path(value).expanduser().resolve()
    for cand in _candidates():
        if cand.is_dir():
            return cand.resolve()
    return _candidates()[0].resolve()


def resolve_data_path(name: str | os.PathLike[str], explicit_dir: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a dataset path: absolute or existing relative-to-cwd paths win, else it is looked up in the data dir.

    A missing file gives a one-line error naming the expected file, the data directory setting and the hub source.
    """
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists():
        if not path.exists():
            raise UserError(f"{path}: file not found", hint="check the path")
        return path
    root = data_dir(explicit_dir)
    full = root / path
    if full.exists():
        return full
    top = str(path).split("/")[0]
    key = "models/stories260K" if str(path).startswith("models/stories260K") else top
    source = HUB_SOURCES.get(key)
    where = f"expected {full} (data dir {root}; set --data-dir or ${DATA_DIR_ENV})"
    raise UserError(
        f"{name}: dataset file not found; {where}" + (f"; it is provided by {source}" if source else ""),
    )


def runs_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    value = explicit or os.environ.get(RUNS_DIR_ENV) or "runs"
    return Path(value).expanduser()


def cache_dir() -> Path:
    """Cache for derived artifacts (dequantized GGUF models, micro models, reference log-probs, compiled kernels)
    shared between runs: $SPARSEALIGN_CACHE_DIR, else the user cache directory (`$XDG_CACHE_HOME/sparsealign`, by
    default ~/.cache/sparsealign on Linux; platformdirs picks the platform's place).  Never inside the package or the
    checkout: an installed wheel must not write into site-packages."""
    value = os.environ.get(CACHE_DIR_ENV)
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("sparsealign", appauthor=False))
