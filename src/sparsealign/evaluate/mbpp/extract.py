"""From a model completion to the code that is tested.

Two extractions (`MbppEvalConfig.extract`, `eval mbpp --extract`):

harness (default)  exactly what the harness of the prompt format runs, so pass@1 is comparable to published
                   numbers: lm-evaluation-harness `mbpp` runs the generation cut at "[DONE]" as is (its HF model
                   cuts at the `until` strings; the task has no filter), bigcode-evaluation-harness `mbpp` runs
                   prompt + generation cut at its stop words.  A broken helper after a correct function fails.
lenient            ours, more forgiving (what the study used first):
1. cut at the earliest stop sequence (generation may overshoot by a few tokens: stops are checked on decoded text);
2. take the first markdown-fenced block if there is one (chat-tuned models fence their code), and drop a stray
   leading "[BEGIN]";
3. keep the code: the longest prefix of whole lines that parses, then drop top-level statements that would run
   on import -- bare expressions (`print(f(3))`), asserts and an `if __name__ == "__main__":` block -- so the
   model's own ad-hoc tests neither crash the program nor count as ours.  Imports, functions, classes and
   assignments stay.  Code that does not parse at all is returned as is (the sandbox reports the SyntaxError).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Literal

Extraction = Literal["harness", "lenient"]
EXTRACTIONS: tuple[str, ...] = ("harness", "lenient")

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.DOTALL)


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = len(text)
    for stop in stops:
        pos = text.find(stop)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut]


def strip_fences(text: str) -> str:
    match = _FENCE.search(text)
    if match:
        return match.group(1)
    return text.replace("```", "")


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source contains null bytes
        return False
    return True


def longest_parsable_prefix(code: str) -> str:
    """The longest prefix of whole lines that is valid Python ("" if none is)."""
    lines = code.splitlines(keepends=True)
    for end in range(len(lines), 0, -1):
        candidate = "".join(lines[:end])
        if _parses(candidate):
            return candidate
    return ""


def _is_main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__name__" in ast.unparse(node.test)


def drop_top_level_runs(code: str) -> str:
    """Remove top-level expression statements, asserts and `if __name__ ...` blocks, keeping line layout."""
    tree = ast.parse(code)
    lines = code.splitlines(keepends=True)
    drop: set[int] = set()
    for node in tree.body:
        if isinstance(node, (ast.Expr, ast.Assert)) or _is_main_guard(node):
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                continue  # a module docstring is harmless
            drop.update(range(node.lineno - 1, (node.end_lineno or node.lineno)))
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def extract_code(completion: str, stops: Sequence[str] = ()) -> str:
    """The code to test from a raw completion (see the module docstring for the steps)."""
    text = truncate_at_stop(completion, stops)
    text = strip_fences(text)
    text = re.sub(r"^\s*\[BEGIN\]\s*\n?", "", text)
    kept = longest_parsable_prefix(text)
    if not kept.strip():
        return text  # nothing parses: keep it, so the failure is reported as the model's syntax error
    return drop_top_level_runs(kept).rstrip() + "\n"


def harness_code(completion: str, stops: Sequence[str] = ()) -> str:
    """What lm-eval / bigcode execute: the completion up to the first stop sequence, untouched."""
    return truncate_at_stop(completion, stops)


def extract(completion: str, stops: Sequence[str], how: Extraction = "harness") -> str:
    """The code to test under the chosen extraction (see the module docstring)."""
    if how == "harness":
        return harness_code(completion, stops)
    if how == "lenient":
        return extract_code(completion, stops)
    raise ValueError(f"unknown extraction {how!r}; choose one of {', '.join(EXTRACTIONS)}")
