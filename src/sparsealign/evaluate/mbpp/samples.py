"""Score MBPP generations made elsewhere (vLLM, an endpoint, another harness) in our sandbox: `eval mbpp --samples`.

Two sample formats, detected per record:

lm-eval   `lm_eval --log_samples` JSONL of the `mbpp` task family: {"doc": {"task_id": 11, ...}, "resps": [[text]],
          "filtered_resps": [text], ...}.  The filtered response (the harness cut it at "[DONE]") is scored with the
          lm-eval format, so `--extract harness` runs exactly the program lm-eval ran.
evalplus  evalplus samples JSONL: {"task_id": "Mbpp/11", "solution": code} (a self-contained program, run as is)
          or {"task_id": "Mbpp/11", "completion": text} (appended to the bigcode/evalplus docstring prompt).

Programs are tested against the MBPP file's own tests (`--data`), not evalplus's extended "plus" tests.
Several records for one task are several samples (pass@k).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsealign.data.readers import read_rows
from sparsealign.data.records import MbppTask
from sparsealign.errors import DataError

SAMPLE_FORMATS = ("lm-eval", "evalplus")
_EVALPLUS_ID = re.compile(r"^Mbpp/(\d+)$")


def sample_format(record: Any) -> str | None:
    """`lm-eval`, `evalplus` or None for a record of neither."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("doc"), dict) and ("filtered_resps" in record or "resps" in record):
        return "lm-eval"
    if "task_id" in record and any(isinstance(record.get(k), str) for k in ("solution", "completion")):
        return "evalplus"
    return None


def _first_text(value: Any) -> str | None:
    """lm-eval keeps responses nested ([[text]] raw, [text] filtered); the first string inside."""
    while isinstance(value, list) and value:
        value = value[0]
    return value if isinstance(value, str) else None


def _task_id(record: dict[str, Any], fmt: str) -> int | None:
    raw = record["doc"].get("task_id") if fmt == "lm-eval" else record.get("task_id")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        match = _EVALPLUS_ID.match(raw.strip())
        if match:
            return int(match.group(1))
        if raw.strip().isdigit():
            return int(raw.strip())
    return None


def read_samples(path: str | Path, tasks: Sequence[MbppTask]) -> tuple[str, list[dict[str, Any]]]:
    """(format, [{task, sample, completion, code}]) from a samples file; every task id must be in `tasks`."""
    path = Path(path)
    by_id = {t.task_id: t for t in tasks}
    fmt_seen: str | None = None
    counts: dict[int, int] = {}
    out: list[dict[str, Any]] = []
    for row in read_rows(path):
        line, prefix = row.where()
        if row.error:
            raise DataError(path, f"{prefix}{row.detail or row.error}", line=line)
        fmt = sample_format(row.value)
        if fmt is None:
            keys = ", ".join(sorted(row.value)[:8]) if isinstance(row.value, dict) else type(row.value).__name__
            raise DataError(path, f"{prefix}not an MBPP sample (fields: {keys})", line=line,
                            hint='expected lm-eval --log_samples records ({"doc": ..., "filtered_resps": ...}) or '
                                 'evalplus samples ({"task_id": "Mbpp/2", "solution": ...})')
        if fmt_seen is not None and fmt != fmt_seen:
            raise DataError(path, f"{prefix}{fmt} record in a file of {fmt_seen} records", line=line)
        fmt_seen = fmt
        task_id = _task_id(row.value, fmt)
        field = "doc.task_id" if fmt == "lm-eval" else "task_id"
        if task_id is None:
            raise DataError(path, f"{prefix}field '{field}' is not an MBPP task id "
                            f"(got {row.value['doc'].get('task_id') if fmt == 'lm-eval' else row.value.get('task_id')!r:.40})",
                            line=line, hint='use integers (lm-eval) or "Mbpp/N" (evalplus)')
        if task_id not in by_id:
            raise DataError(path, f"{prefix}task id {task_id} is not in the MBPP data ({len(by_id)} tasks, "
                            f"ids {min(by_id)}-{max(by_id)})", line=line,
                            hint="pass the MBPP file the samples were made from with --data")
        sample = {"task": by_id[task_id], "sample": counts.get(task_id, 0), "code": None}
        if fmt == "lm-eval":
            text = _first_text(row.value.get("filtered_resps")) or _first_text(row.value.get("resps"))
            if text is None:
                raise DataError(path, f"{prefix}no response text in filtered_resps/resps", line=line)
            sample["completion"] = text
        elif isinstance(row.value.get("solution"), str):
            sample["completion"] = sample["code"] = row.value["solution"]
        else:
            sample["completion"] = row.value["completion"]
        counts[task_id] = counts.get(task_id, 0) + 1
        out.append(sample)
    if not out:
        raise DataError(path, "no samples", hint="pass an lm-eval --log_samples or evalplus samples JSONL")
    return fmt_seen or "", out
