"""How a verb reports its result: one JSON object on stdout with --json, else human lines (light: stdlib only)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any


def emit(result: dict[str, Any], as_json: bool, lines: Iterable[str], *, human_to_stderr: bool = False) -> None:
    """`--json`: exactly one JSON object on stdout.  Otherwise the human lines, on stdout or (for verbs whose real
    output is a file) on stderr."""
    if as_json:
        print(json.dumps(result, sort_keys=True, default=str), flush=True)
        return
    stream = sys.stderr if human_to_stderr else sys.stdout
    for line in lines:
        print(line, file=stream)
