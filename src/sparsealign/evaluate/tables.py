"""Per-item result tables (one row per problem sample / pair), written atomically as Parquet or JSON Lines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsealign.io import atomic_path


def save_table(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Write `rows` to `path` atomically: `.jsonl` by suffix, else Parquet; `columns` fixes the column order."""
    path = Path(path)
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    rows = [{c: r.get(c) for c in cols} for r in rows]
    if path.suffix == ".jsonl":
        with atomic_path(path) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return path
    import pandas as pd

    with atomic_path(path, suffix=".parquet") as tmp:
        pd.DataFrame(rows, columns=cols).to_parquet(tmp, index=False)
    return path


def load_table(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    import pandas as pd

    return pd.read_parquet(path).to_dict(orient="records")
