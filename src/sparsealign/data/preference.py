"""Load preference pairs from any supported source into normalised `PreferencePair`s.

    load = load_pairs("hh-rlhf/helpful-base/test.jsonl.gz")   # relative names resolve against the data directory
    load.pairs, load.count, load.valid, load.skipped, load.duplicates

Two kinds of bad input are handled differently (see docs/data.md):
  * a broken row (invalid JSON, non-UTF-8 bytes, truncated gzip, wrong type, missing field) stops the read with a
    one-line DataError naming file:line and the reason, unless `skip_invalid` (then it is skipped and counted);
  * a degenerate pair that real data contains (identical responses, an empty response, chosen/rejected prompts that
    differ) is skipped and counted with a one-line warning, unless `strict` (then it is an error).
Exact duplicate pairs (same prompt, chosen and rejected) are dropped and counted.  No usable pair at all is an error.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsealign.data.folders import folder_rows
from sparsealign.data.formats import FORMATS, RowProblem, detect_format, normalise
from sparsealign.data.hub import hub_rows
from sparsealign.data.readers import Row, read_rows
from sparsealign.data.records import PreferencePair
from sparsealign.data.splits import split_pairs
from sparsealign.errors import DataError, UserError
from sparsealign.io import atomic_path
from sparsealign.settings import data_dir, resolve_data_path

log = logging.getLogger("sparsealign.data")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq", ".ndjson", ".gz", ".txt")
DEGENERATE_REASONS = ("identical", "empty_response", "prompt_mismatch")


@dataclass
class PreferenceLoad:
    pairs: list[PreferencePair]
    format: str
    path: str
    count: int  # records in the file (broken ones included)
    valid: int  # usable pairs returned (after skipping and de-duplication)
    skipped: dict[str, int] = field(default_factory=dict)  # by reason: broken rows and degenerate pairs
    duplicates: int = 0

    @property
    def degenerate(self) -> dict[str, int]:
        return {k: v for k, v in self.skipped.items() if k in DEGENERATE_REASONS}

    def file_splits(self) -> dict[str, int] | None:
        """Per-split counts when the source carries its own splits (hub datasets, a `split` column)."""
        names = [p.meta.get("split") for p in self.pairs]
        if not names or any(n is None for n in names):
            return None
        return dict(Counter(str(n) for n in names))

    def score_stats(self) -> dict[str, int]:
        scored = [p for p in self.pairs if p.score_chosen is not None and p.score_rejected is not None]
        return {"with_scores": len(scored), "ties": sum(p.score_chosen == p.score_rejected for p in scored),
                "chosen_lower": sum(p.score_chosen < p.score_rejected for p in scored)}  # type: ignore[operator]


def looks_like_hub_id(source: str) -> bool:
    return bool(_HUB_ID.match(source)) and not source.lower().endswith(_DATA_SUFFIXES)


def resolve_source(source: str | Path, data_root: str | Path | None = None) -> Path | str:
    """A local file or dataset folder (absolute, relative to cwd, or relative to the data dir) -> Path; when no such
    path exists, a hub id -> str (read through `datasets.load_dataset`)."""
    try:
        return resolve_data_path(source, data_root)
    except UserError:
        if isinstance(source, str) and looks_like_hub_id(source):
            return source
        raise


def source_label(path: Path, data_root: str | Path | None = None) -> str:
    """Stable short name for ids: the path relative to the data dir when inside it, else the file name."""
    try:
        return str(path.resolve().relative_to(data_dir(data_root)))
    except ValueError:
        return path.name


def _fail(path: object, row: Row, reason: str, *, hint: str | None = None) -> DataError:
    line, prefix = row.where()
    return DataError(row.path or path, prefix + reason, line=line, hint=hint)


def load_pairs(
    source: str | Path,
    *,
    format: str | None = None,
    strict: bool = False,
    skip_invalid: bool = False,
    split: str | None = None,
    limit: int | None = None,
    warn: bool = True,
    data_root: str | Path | None = None,
) -> PreferenceLoad:
    """Read `source` (a file or a hub id) into normalised pairs. See the module docstring for the error policy.

    `split` picks a split: for hub ids it is passed to `datasets.load_dataset`; for files with a `split` column it
    filters on it; otherwise `train`/`eval` select the default `split_pairs` partition (eval_fraction 0.1, seed 0).
    `limit` stops after that many records.  `warn` prints the one-line degenerate-pair warning on stderr.
    `data_root` overrides the data directory that relative names resolve against (default: settings.data_dir()).
    """
    if format is not None and format not in FORMATS:
        raise UserError(f"unknown format {format!r}; allowed: {', '.join(FORMATS)}")
    where = resolve_source(source, data_root)
    own_splits = not isinstance(where, Path) or where.is_dir()  # hub datasets and folders tag rows with splits
    if isinstance(where, str):
        rows, label = hub_rows(where, split), where + (f":{split}" if split else "")
    elif where.is_dir():
        rows, label = folder_rows(where, split), source_label(where, data_root)
    else:
        rows, label = read_rows(where), source_label(where, data_root)
    shown = where
    fmt = format
    skipped: Counter[str] = Counter()
    pairs: list[PreferencePair] = []
    seen: set[tuple[str, str, str]] = set()
    count = duplicates = 0
    for row in rows:
        if limit is not None and count >= limit:
            break
        count += 1
        if row.error is not None:
            if not skip_invalid:
                keep = "keeps the rows before the damage" if row.error.startswith(("truncated_", "corrupt_")) \
                    else "skips broken rows"
                raise _fail(shown, row, row.detail, hint=f"{row.hint()}; --skip-invalid {keep}")
            skipped[row.error] += 1
            continue
        record = row.value
        file_split = record.pop("__split__", None) if own_splits else record.get("split")
        if fmt is None:
            fmt = detect_format(record)
            if fmt is None:
                raise _fail(shown, row, f"unknown format (fields: {', '.join(sorted(map(str, record)))[:200]})",
                            hint=f"pass --format, one of: {', '.join(FORMATS)}")
        try:
            at = f"{label}/{row.path.relative_to(where)}" if row.path is not None and isinstance(where, Path) else label
            pair = normalise(record, fmt, pair_id=f"{at}:{row.line or row.index}", source=label)
        except RowProblem as problem:
            if problem.degenerate and strict:
                raise _fail(shown, row, f"degenerate pair: {problem.detail}",
                            hint="drop --strict to skip and count degenerate pairs") from None
            if not problem.degenerate and not skip_invalid:
                raise _fail(shown, row, problem.detail + f" for format {fmt}",
                            hint="fix the row, pass --format, or --skip-invalid to skip broken rows") from None
            skipped[problem.reason] += 1
            continue
        if file_split is not None:
            pair.meta.setdefault("split", str(file_split))
        key = (pair.prompt, pair.chosen, pair.rejected)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        pairs.append(pair)
    if fmt is None:  # every row was broken and skipped
        fmt = format or "unknown"
    if split is not None and not own_splits:
        pairs = _select_split(pairs, split, shown)
    result = PreferenceLoad(pairs, fmt, str(shown), count, len(pairs), dict(sorted(skipped.items())), duplicates)
    if not pairs:
        detail = ", ".join(f"{k}={v}" for k, v in result.skipped.items()) or "none"
        raise DataError(shown, f"no usable preference pair ({count} records, format {fmt}; skipped: {detail})",
                        hint="check --format, or pass a file with valid pairs")
    if result.degenerate and warn:
        detail = ", ".join(f"{k}={v}" for k, v in result.degenerate.items())
        print(f"warning: {shown}: skipped {sum(result.degenerate.values())} degenerate pairs ({detail}); "
              "--strict makes them errors", file=sys.stderr)
    log.info("loaded %s: format=%s count=%d valid=%d skipped=%s duplicates=%d", shown, fmt, count, len(pairs),
             result.skipped, duplicates)
    return result


def _select_split(pairs: list[PreferencePair], split: str, shown: object) -> list[PreferencePair]:
    own = {p.meta.get("split") for p in pairs}
    if own != {None}:
        if split not in own:
            raise DataError(shown, f"no split {split!r} in the file; it has: {', '.join(sorted(map(str, own)))}")
        return [p for p in pairs if p.meta.get("split") == split]
    if split not in ("train", "eval"):
        raise DataError(shown, f"the file has no split column, so --split must be train or eval, not {split!r}")

    train, evaluation = split_pairs(pairs)
    return train if split == "train" else evaluation


def write_pairs_jsonl(pairs: Iterable[PreferencePair], path: str | Path) -> Path:
    """Write pairs atomically in the generic JSONL format; `load_pairs` reads them back unchanged."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair.to_dict(), ensure_ascii=False) + "\n")
    return Path(path)


def pair_example(pair: PreferencePair, width: int = 300) -> dict[str, Any]:
    """A pair as a dict with long texts shortened, for `data inspect`."""
    out = pair.to_dict()
    for key in ("prompt", "chosen", "rejected", "rationale"):
        if isinstance(out.get(key), str) and len(out[key]) > width:
            out[key] = out[key][:width] + "…"
    if out.get("messages"):
        out["messages"] = [{**m, "content": m["content"][:width]} for m in out["messages"]]
    return out
