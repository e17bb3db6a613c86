"""Row readers for the container formats: JSONL, JSON (array), CSV, Parquet, each optionally gzipped.

They know nothing about preference pairs or MBPP: they yield one `Row` per record with its location (line or record
number) and, for a broken row, a reason key and a one-line detail instead of a value.  The callers decide whether a
broken row stops the read (default) or is skipped and counted (`--skip-invalid`).  Stdlib only, except Parquet
(pyarrow, imported when a Parquet file is read).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsealign.errors import DataError

CONTAINERS = ("jsonl", "json", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet",
             ".pq": "parquet"}


@dataclass
class Row:
    index: int  # 1-based record number (counts broken rows too)
    line: int | None  # 1-based line in the file, where the container has lines
    value: Any = None
    error: str | None = None  # reason key of a broken row: invalid_json, non_utf8, truncated_gzip, wrong_type, ...
    detail: str = ""

    def where(self) -> tuple[int | None, str]:
        """(line for DataError, prefix for the reason) — JSON arrays and Parquet have records, not lines."""
        return (self.line, "") if self.line is not None else (None, f"record {self.index}: ")


def container_of(path: Path) -> str:
    """Container kind from the suffix (`.gz` stripped); unknown suffixes are sniffed from the first byte."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix.lower()
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    head = _sniff(path)
    if head == b"[":
        return "json"
    if head == b"{":
        return "jsonl"
    if head == b"":
        raise DataError(path, "empty file (no records)", hint="pass a file with preference pairs")
    raise DataError(path, f"unknown file format (suffix {suffix or 'none'!r})",
                    hint="use .jsonl, .json, .csv or .parquet (optionally .gz)")


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _sniff(path: Path) -> bytes:
    try:
        with _open(path) as fh:
            return fh.read(4096).lstrip()[:1]
    except (OSError, EOFError, zlib.error):
        return b"?"


def _gzip_row(index: int, line: int | None, exc: BaseException) -> Row:
    if isinstance(exc, EOFError):
        return Row(index, line, error="truncated_gzip", detail="gzip stream ends early (truncated file)")
    return Row(index, line, error="corrupt_gzip", detail=f"corrupt gzip data ({exc})")


def read_rows(path: Path) -> Iterator[Row]:
    """Yield the rows of `path`; an empty file (no records at all) is a DataError."""
    kind = container_of(path)
    if kind in ("json", "csv"):  # whole-file formats: decode once, then parse the text
        text, err = _read_all(path)
        rows = iter([err]) if err is not None else (_json_rows if kind == "json" else _csv_rows)(text or "")
    else:
        rows = (_jsonl_rows if kind == "jsonl" else _parquet_rows)(path)
    seen = False
    for row in rows:
        seen = True
        yield row
    if not seen:
        raise DataError(path, "empty file (no records)", hint="pass a file with preference pairs")


def _parse_json_line(raw: bytes, index: int, lineno: int) -> Row:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Row(index, lineno, error="non_utf8",
                   detail=f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Row(index, lineno, error="invalid_json", detail=f"invalid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(value, dict):
        return Row(index, lineno, error="wrong_type", detail=f"expected a JSON object, got {type(value).__name__}")
    return Row(index, lineno, value)


def _jsonl_rows(path: Path) -> Iterator[Row]:
    index = 0
    lineno = 0
    with _open(path) as fh:
        while True:
            try:
                raw = fh.readline()
            except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                yield _gzip_row(index + 1, lineno + 1, exc)
                return
            if not raw:
                return
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            index += 1
            yield _parse_json_line(raw, index, lineno)


def _read_all(path: Path) -> tuple[str | None, Row | None]:
    """Whole-file read for JSON and CSV; a decoding failure comes back as an error row with its line."""
    try:
        with _open(path) as fh:
            data = fh.read()
    except (EOFError, OSError, zlib.error) as exc:
        return None, _gzip_row(1, None, exc)
    try:
        return data.decode("utf-8-sig"), None  # tolerate a byte-order mark (spreadsheet exports)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return None, Row(1, line, error="non_utf8", detail=f"not UTF-8 text (byte 0x{data[exc.start]:02x})")


def _json_rows(text: str) -> Iterator[Row]:
    if not text.strip():
        return
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Row(1, exc.lineno, error="invalid_json", detail=f"invalid JSON ({exc.msg} at column {exc.colno})")
        return
    if isinstance(value, dict):  # a single object, or {"data": [...]} as some exports write
        records = next((v for v in value.values() if isinstance(v, list)), None) if len(value) == 1 else None
        value = records if records is not None else [value]
    if not isinstance(value, list):
        yield Row(1, 1, error="wrong_type", detail=f"expected a JSON array of objects, got {type(value).__name__}")
        return
    for i, item in enumerate(value, 1):
        if isinstance(item, dict):
            yield Row(i, None, item)
        else:
            yield Row(i, None, error="wrong_type", detail=f"expected a JSON object, got {type(item).__name__}")


def _csv_rows(text: str) -> Iterator[Row]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    index = 0
    while True:
        start = reader.line_num + 1  # a quoted field may span lines: report where the record starts
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            index += 1
            yield Row(index, start, error="invalid_csv", detail=f"invalid CSV ({exc})")
            return
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [h.strip() for h in fields]
            continue
        index += 1
        if len(fields) != len(header):
            yield Row(index, start, error="wrong_type",
                      detail=f"row has {len(fields)} fields, the header has {len(header)}")
            continue
        yield Row(index, start, dict(zip(header, fields, strict=True)))


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    for i, item in enumerate(table.to_pylist(), 1):
        yield Row(i, None, item)
