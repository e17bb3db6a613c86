"""A dataset folder (e.g. a cloned hub dataset repo: `train.jsonl`, `data/test-00000-of-00001.parquet`) read with
our own row readers, so a broken row is reported as `file:line` like any single file, nothing is cached on disk and
no `datasets` import is needed.

Split names come from the file names, as `datasets` derives them: the first word of the name (`train`, `test`,
`validation`, and their usual spellings), else `train`.  Files that are not data (README.md, .gitattributes,
scripts) are ignored; data files of different kinds (`.jsonl` beside `.csv`) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from sparsealign.data.readers import CONTAINER_SUFFIXES, Row, compression_of, read_rows
from sparsealign.errors import DataError

_SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test", "eval": "test",
                "evaluation": "test", "validation": "validation", "valid": "validation", "val": "validation",
                "dev": "validation"}
_WORD = re.compile(r"[-_.\s]+")
MAX_ENTRIES = 10_000


def _kind(path: Path) -> str | None:
    """Container kind from the suffixes, or None for a file that is not data (README.md, LICENSE, ...)."""
    try:
        name = path.stem if compression_of(path) else path.name
    except DataError:  # e.g. a .zip beside the data: not ours to read, and not a reason to refuse the folder
        return None
    return CONTAINER_SUFFIXES.get(Path(name).suffix.lower())


def split_of(path: Path, root: Path) -> str:
    for part in reversed(path.relative_to(root).parts):  # the file's own name first, then its folders
        word = _WORD.split(part.lower())[0]
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return "train"


def data_files(root: Path) -> list[Path]:
    """The data files under `root` (hidden folders such as .git skipped); one container kind, else a DataError."""
    files = []
    for n, path in enumerate(root.rglob("*")):
        if n >= MAX_ENTRIES:  # a home directory passed by mistake must not be walked for minutes
            raise DataError(root, f"folder has more than {MAX_ENTRIES} entries; not a dataset folder",
                            hint="pass a data file, or the dataset's own folder")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts) and _kind(path):
            files.append(path)
    files.sort()
    if not files:
        raise DataError(root, "folder holds no data files (.jsonl, .json, .csv, .parquet, optionally compressed)",
                        hint="pass a data file, or a folder of them")
    kinds = sorted({_kind(p) or "" for p in files})
    if len(kinds) > 1:
        shown = ", ".join(str(p.relative_to(root)) for p in files[:4]) + (", ..." if len(files) > 4 else "")
        raise DataError(root, f"folder mixes data files of different kinds ({', '.join(kinds)}: {shown})",
                        hint="pass one of the files, or a folder holding one kind")
    return files


def folder_rows(root: Path, split: str | None = None) -> Iterator[Row]:
    """Rows of every data file under `root` (only the files of `split` when given), each tagged with its split
    (`__split__`) and its file (`Row.path`)."""
    files = data_files(root)
    if split is not None:
        have = sorted({split_of(p, root) for p in files})
        files = [p for p in files if split_of(p, root) == split]
        if not files:
            raise DataError(root, f"no split {split!r} in the folder; it has: {', '.join(have)}")
    for path in files:
        name = split_of(path, root)
        for row in read_rows(path):
            row.path = path
            if row.error is None:
                row.value = {**row.value, "__split__": name}
            yield row
