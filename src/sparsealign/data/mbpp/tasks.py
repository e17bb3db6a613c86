"""MBPP reader: the full `mbpp.jsonl` (974 tasks) and the hand-verified `sanitized-mbpp.json` (427 tasks).

The two files differ: the full file has `text`, `test_setup_code` and `challenge_test_list`; the sanitized one has
`prompt` (edited task text) and `test_imports`.  Both map to `MbppTask`, with tests and setup code kept byte-exact
(no stripping, no newline conversion: `code` fields in the full file contain `\\r\\n`).  Standard splits by task_id:
prompt 1-10, test 11-510, validation 511-600, train 601-974 (`records.MBPP_SPLITS`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sparsealign.data.readers import Row, read_rows
from sparsealign.data.records import MBPP_SPLITS, MbppTask, mbpp_split_of
from sparsealign.errors import DataError, UserError
from sparsealign.settings import resolve_data_path

DEFAULT_MBPP = "mbpp/mbpp.jsonl"
MBPP_FORMATS = ("mbpp", "mbpp-sanitized")


def mbpp_format_of(record: dict[str, Any]) -> str | None:
    """`mbpp` / `mbpp-sanitized` when the record looks like an MBPP task, else None."""
    if not {"task_id", "test_list", "code"} <= set(record):
        return None
    return "mbpp-sanitized" if "prompt" in record and "text" not in record else "mbpp"


def _task(record: dict[str, Any], fmt: str, source: str) -> MbppTask:
    def text(key: str, default: str | None = None) -> str:
        value = record.get(key, default)
        if value is None:
            raise ValueError(f"missing required field '{key}'")
        if not isinstance(value, str):
            raise ValueError(f"field '{key}' must be a string, got {type(value).__name__}")
        return value

    def strings(key: str) -> list[str]:
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"field '{key}' must be a list of strings")
        return list(value)

    task_id = record.get("task_id")
    if isinstance(task_id, bool) or not isinstance(task_id, int):
        raise ValueError(f"field 'task_id' must be an integer, got {task_id!r:.40}")
    tests = strings("test_list")
    if not tests:
        raise ValueError("field 'test_list' is empty")
    return MbppTask(
        task_id=task_id,
        text=text("prompt" if fmt == "mbpp-sanitized" else "text"),
        code=text("code"),
        test_list=tests,
        test_setup_code=text("test_setup_code", ""),
        test_imports=strings("test_imports"),
        challenge_test_list=strings("challenge_test_list"),
        source=source,
    )


def load_mbpp(
    path: str | Path | None = None, *, split: str | None = None, data_root: str | Path | None = None
) -> list[MbppTask]:
    """Read MBPP tasks (default: `mbpp/mbpp.jsonl` in the data dir, or in `data_root`), optionally one split."""
    if split is not None and split not in MBPP_SPLITS:
        raise UserError(f"unknown MBPP split {split!r}; allowed: {', '.join(MBPP_SPLITS)}")
    resolved = resolve_data_path(path or DEFAULT_MBPP, data_root)
    tasks: list[MbppTask] = []
    fmt: str | None = None
    seen: set[int] = set()
    for row in read_rows(resolved):
        if row.error is not None:
            raise _fail(resolved, row, row.detail, row.hint())
        fmt = fmt or mbpp_format_of(row.value)
        if fmt is None:
            fields = ", ".join(sorted(map(str, row.value)))[:200]
            raise _fail(resolved, row, f"not an MBPP file (fields: {fields}); expected task_id, text/prompt, "
                        "code, test_list", "pass an MBPP file such as mbpp/mbpp.jsonl, or another --format")
        try:
            task = _task(row.value, fmt, fmt)
        except ValueError as exc:
            raise _fail(resolved, row, str(exc), _TASK_HINT) from None
        if task.task_id in seen:
            raise _fail(resolved, row, f"duplicate task_id {task.task_id}", "give every task its own task_id")
        seen.add(task.task_id)
        tasks.append(task)
    if split is not None:
        tasks = [t for t in tasks if mbpp_split_of(t.task_id) == split]
    return tasks


_TASK_HINT = "fix the row: a task has task_id (integer), text or prompt, code, and test_list (strings)"


def _fail(path: Path, row: Row, reason: str, hint: str) -> DataError:
    line, prefix = row.where()
    return DataError(path, prefix + reason, line=line, hint=hint)


def mbpp_split_counts(tasks: list[MbppTask]) -> dict[str, int]:
    """Tasks per standard split, in the order prompt, test, validation, train (plus `other` if any)."""
    counts = Counter(mbpp_split_of(t.task_id) for t in tasks)
    out = {name: counts.get(name, 0) for name in MBPP_SPLITS}
    if counts.get("other"):
        out["other"] = counts["other"]
    return out


def is_mbpp_source(path: Path) -> bool:
    """True when the first record of `path` is an MBPP task (used by `data inspect` / `data prepare`)."""
    try:
        first = next(iter(read_rows(path)))
    except (DataError, StopIteration):
        return False
    return first.error is None and mbpp_format_of(first.value) is not None
