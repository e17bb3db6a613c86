"""Row readers for the container formats: JSONL, JSON (array), CSV, Parquet, each optionally compressed (.gz, .bz2,
.xz; .zst and the like are refused with a one-line error naming the fix).

They know nothing about preference pairs or MBPP: they yield one `Row` per record with its location (line or record
number) and, for a broken row, a reason key and a one-line detail instead of a value.  The callers decide whether a
broken row stops the read (default) or is skipped and counted (`--skip-invalid`).  Stdlib only, except Parquet
(pyarrow, imported when a Parquet file is read).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsealign.errors import DataError

CONTAINERS = ("jsonl", "json", "csv", "parquet")
CONTAINER_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                      ".parquet": "parquet", ".pq": "parquet"}
COMPRESSIONS = {".gz": ("gzip", gzip.open), ".bz2": ("bz2", bz2.open), ".xz": ("xz", lzma.open),
                ".lzma": ("xz", lzma.open)}
_UNSUPPORTED = {".zst": "zstd -d", ".zstd": "zstd -d", ".zip": "unzip", ".lz4": "lz4 -d", ".br": "brotli -d",
                ".7z": "7z x", ".z": "uncompress", ".tar": "tar -xf", ".tgz": "tar -xzf"}
_STREAM_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)  # gzip.BadGzipFile and bz2's errors are OSErrors
MAX_DEPTH = 100  # deeper records are refused: every later step (to_dict, json.dumps) recurses over them
csv.field_size_limit(2**31 - 1)  # long responses are real data; the default 128 KiB cell limit is not


@dataclass
class Row:
    index: int  # 1-based record number (counts broken rows too)
    line: int | None  # 1-based line in the file, where the container has lines
    value: Any = None
    error: str | None = None  # reason key of a broken row: invalid_json, non_utf8, truncated_gzip, wrong_type, ...
    detail: str = ""
    path: Path | None = None  # the file the row comes from, when the source is a folder of files

    def hint(self) -> str:
        """The fix for a broken row: a damaged compressed stream needs a new copy of the file; a row needs editing."""
        if self.error and self.error.startswith(("truncated_", "corrupt_")):
            return "re-download or re-compress the file"
        if self.error == "non_utf8":
            return "re-encode the file as UTF-8 (iconv -t UTF-8)"
        return "fix the row"

    def where(self) -> tuple[int | None, str]:
        """(line for DataError, prefix for the reason) — JSON arrays and Parquet have records, not lines."""
        return (self.line, "") if self.line is not None else (None, f"record {self.index}: ")


def compression_of(path: Path) -> str | None:
    """`gzip`, `bz2`, `xz` or None from the last suffix; an archive or compression we cannot read is a DataError."""
    suffix = path.suffix.lower()
    if suffix in COMPRESSIONS:
        return COMPRESSIONS[suffix][0]
    if suffix in _UNSUPPORTED:
        raise DataError(path, f"{suffix} files are not supported",
                        hint=f"decompress it first ({_UNSUPPORTED[suffix]} {path.name}), or recompress as .gz, .bz2 "
                             "or .xz")
    return None


def check_regular_file(path: Path) -> None:
    """A device (/dev/zero, /dev/urandom) never ends and a socket is no file; a directory is not one file.  A named
    pipe is read like a file (it waits for its writer, as `cat` does)."""
    if path.is_dir():
        raise DataError(path, "is a directory, not a data file", hint="pass one file inside it")
    if path.is_char_device() or path.is_block_device() or path.is_socket():
        raise DataError(path, "is a device or socket, not a data file", hint="pass a data file")


def container_of(path: Path) -> str:
    """Container kind from the suffix (compression suffix stripped); unknown suffixes are sniffed from the first
    byte."""
    check_regular_file(path)
    name = path.stem if compression_of(path) else path.name
    suffix = Path(name).suffix.lower()
    if suffix in CONTAINER_SUFFIXES:
        return CONTAINER_SUFFIXES[suffix]
    head = _sniff(path)
    if head == b"[":
        return "json"
    if head == b"{":
        return "jsonl"
    if head == b"":
        raise DataError(path, "empty file (no records)", hint="pass a file with preference pairs")
    raise DataError(path, f"unknown file format (suffix {suffix or 'none'!r})",
                    hint="use .jsonl, .json, .csv or .parquet (optionally .gz, .bz2 or .xz)")


def _open(path: Path):
    kind = compression_of(path)
    return COMPRESSIONS[path.suffix.lower()][1](path, "rb") if kind else open(path, "rb")


def _sniff(path: Path) -> bytes:
    try:
        with _open(path) as fh:
            return fh.read(4096).lstrip()[:1]
    except _STREAM_ERRORS:
        return b"?"


def _stream_row(path: Path, index: int, line: int | None, exc: BaseException) -> Row:
    kind = compression_of(path) or "file"
    if isinstance(exc, EOFError):
        return Row(index, line, error=f"truncated_{kind}", detail=f"{kind} stream ends early (truncated file)")
    return Row(index, line, error=f"corrupt_{kind}", detail=f"corrupt {kind} data ({exc})")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _shape_problem(value: Any) -> tuple[str, str] | None:
    """(reason, detail) when a parsed record is nested too deeply or holds a lone surrogate (JSON's "\\ud800"
    escape: no text, and every later encode would fail); iterative, as a recursive walk would hit the very limit
    it checks for."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return "too_deep", f"record nested deeper than {MAX_DEPTH} levels"
        if isinstance(node, dict):
            children: Any = [*node.keys(), *node.values()]
        elif isinstance(node, list):
            children = node
        else:
            if isinstance(node, str) and _SURROGATE.search(node):
                return "invalid_json", "a string holds a lone surrogate escape (\\ud800-\\udfff), which is not text"
            continue
        stack.extend((child, depth + 1) for child in children)
    return None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: json.loads keeps the last of two equal keys silently; here it is an error."""
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        raise _DuplicateKey(next(k for i, k in enumerate(keys) if k in keys[:i]))
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _loads(text: str, index: int, line: int | None) -> Row:
    """Parse one JSON text into a Row: its value, or the reason it is broken (never an exception).  `line` is the
    line the text starts on; a whole-file JSON error reports the line of the error itself."""
    try:
        return Row(index, line, _DECODER.decode(text))
    except json.JSONDecodeError as exc:
        at = exc.lineno + (line or 1) - 1
        return Row(index, at, error="invalid_json", detail=f"invalid JSON ({exc.msg} at column {exc.colno})")
    except _DuplicateKey as exc:
        return Row(index, line, error="duplicate_key", detail=f"key {str(exc)[:60]!r} appears twice in one object")
    except RecursionError:
        return Row(index, line, error="too_deep", detail=f"JSON nested deeper than {MAX_DEPTH} levels")


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
        if row.error is None and not isinstance(row.value, dict):
            row = Row(row.index, row.line, error="wrong_type",
                      detail=f"expected a JSON object, got {type(row.value).__name__}")
        elif row.error is None and (problem := _shape_problem(row.value)) is not None:
            row = Row(row.index, row.line, error=problem[0], detail=problem[1])
        yield row
    if not seen:
        raise DataError(path, "empty file (no records)", hint="pass a file with preference pairs")


def _decode_line(raw: bytes, index: int, lineno: int) -> Row:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Row(index, lineno, error="non_utf8",
                   detail=f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
    return _loads(text.rstrip("\r\n"), index, lineno)  # one line: an error is on `lineno`, never the next


def _jsonl_rows(path: Path) -> Iterator[Row]:
    index = 0
    lineno = 0
    with _open(path) as fh:
        while True:
            try:
                raw = fh.readline()
            except _STREAM_ERRORS as exc:
                yield _stream_row(path, index + 1, lineno + 1, exc)
                return
            if not raw:
                return
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            index += 1
            yield _decode_line(raw, index, lineno)


_UTF16 = (b"\xff\xfe", b"\xfe\xff")


def _read_all(path: Path) -> tuple[str | None, Row | None]:
    """Whole-file read for JSON and CSV; a decoding failure comes back as an error row with its line."""
    try:
        with _open(path) as fh:
            data = fh.read()
    except _STREAM_ERRORS as exc:
        return None, _stream_row(path, 1, None, exc)
    try:
        return data.decode("utf-8-sig"), None  # tolerate a byte-order mark (spreadsheet exports)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        what = "UTF-16 text, not UTF-8 (re-encode it: iconv -f UTF-16 -t UTF-8)" if data[:2] in _UTF16 else \
            f"not UTF-8 text (byte 0x{data[exc.start]:02x})"
        return None, Row(1, line, error="non_utf8", detail=what)


def _json_rows(text: str) -> Iterator[Row]:
    if not text.strip():
        return
    top = _loads(text, 1, 1)
    if top.error is not None:
        yield top
        return
    value = top.value
    if isinstance(value, dict):  # a single object, or {"data": [...]} as some exports write
        records = next((v for v in value.values() if isinstance(v, list)), None) if len(value) == 1 else None
        value = records if records is not None else [value]
    if not isinstance(value, list):
        yield Row(1, 1, error="wrong_type", detail=f"expected a JSON array of objects, got {type(value).__name__}")
        return
    for i, item in enumerate(value, 1):
        yield Row(i, None, item)


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
            dup = next((h for i, h in enumerate(header) if h in header[:i]), None)
            if dup is not None:
                yield Row(1, start, error="duplicate_key", detail=f"column {dup[:60]!r} appears twice in the header")
                return
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

    if compression_of(path):  # Parquet compresses inside; an outer stream is read into memory first
        try:
            with _open(path) as fh:
                source: Any = pa.BufferReader(fh.read())
        except _STREAM_ERRORS as exc:
            yield _stream_row(path, 1, None, exc)
            return
    else:
        source = path
    try:
        table = pq.read_table(source)
        records = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(path, f"not a readable Parquet file ({first})",
                        hint="re-export the file; a Parquet file is only readable when complete") from None
    names = table.column_names
    dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if dup is not None:
        raise DataError(path, f"column {dup[:60]!r} appears twice", hint="rename one of the columns")
    for i, item in enumerate(records, 1):
        yield Row(i, None, item)
