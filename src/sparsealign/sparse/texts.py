"""Calibration / evaluation texts by name (no torch): MBPP code, HH dialogue, or a local file.

    mbpp            `code` of mbpp/mbpp.jsonl (Python)
    hh              `chosen` transcripts of hh-rlhf/helpful-base/test.jsonl.gz (dialogue)
    hh-harmless     `chosen` of hh-rlhf/harmless-base/test.jsonl.gz
    PATH.jsonl      field `text` (else `code`, `chosen`, `prompt`) of each row
    PATH.txt        paragraphs separated by blank lines
`skip` drops the first texts, so calibration and evaluation can take disjoint slices of one source.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from sparsealign.errors import DataError, UserError
from sparsealign.settings import resolve_data_path

NAMED = {
    "mbpp": ("mbpp/mbpp.jsonl", "code"),
    "hh": ("hh-rlhf/helpful-base/test.jsonl.gz", "chosen"),
    "hh-harmless": ("hh-rlhf/harmless-base/test.jsonl.gz", "chosen"),
}
FIELDS = ("text", "code", "chosen", "prompt")


def _jsonl(path: Path, field: str | None) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"invalid JSON ({exc.msg})", line=line_no) from None
            key = field or next((k for k in FIELDS if isinstance(row, dict) and isinstance(row.get(k), str)), None)
            if key is None or not isinstance(row.get(key), str):
                raise DataError(path, f"no text field (one of {', '.join(FIELDS)})", line=line_no)
            out.append(row[key])
    return out


def load_texts(source: str, n: int | None = None, skip: int = 0) -> list[str]:
    if source in NAMED:
        rel, field = NAMED[source]
        texts = _jsonl(resolve_data_path(rel), field)
    else:
        path = Path(source)
        if not path.exists():
            raise UserError(f"{source}: not a file and not one of {', '.join(NAMED)}",
                            hint="pass mbpp, hh, hh-harmless or a .jsonl/.txt path")
        if path.suffix in (".jsonl", ".gz"):
            texts = _jsonl(path, None)
        else:
            texts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    texts = texts[skip:]
    texts = texts[:n] if n else texts
    if not texts:
        raise UserError(f"{source}: no texts left (skip={skip}, n={n})", hint="lower --skip or use another source")
    return texts
