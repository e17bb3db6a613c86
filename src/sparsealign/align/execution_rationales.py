"""Execution-grounded rationales for code pairs: facts from running the task's tests, no LLM.

A *code pair* is a `PreferencePair` whose `chosen` and `rejected` are Python solutions and whose `meta` carries the
task's tests in MBPP form:

    meta = {"task_id": 11, "test_list": ["assert f(1) == 2", ...],       # required: the asserts
            "test_setup_code": "...", "test_imports": ["import math"]}    # optional

Each assert runs as its own sandboxed program (imports + setup + solution + that one assert), so one failing assert
does not hide the others.  An `assert <expr> == <expected>` is rewritten to evaluate `<expr>` once and print its
repr first, so the rationale can say what the solution returned.  The rationale states, for both solutions, how many
tests pass, which assert failed and how (the exception, or the returned value against the expected expression).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sparsealign.data.records import PreferencePair
from sparsealign.errors import DataError

ACTUAL_MARK = "<<sparsealign-actual>>"
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)|StopIteration)\b(:.*)?$")
MAX_REPR = 120


@dataclass
class AssertOutcome:
    test: str
    status: str  # passed | failed | timeout | error
    exception: str | None = None  # "AssertionError", "NameError: name 'x' is not defined", ...
    actual: str | None = None  # repr of the left-hand side of `assert lhs == rhs`, when it could be computed
    expected: str | None = None  # source of the right-hand side


def code_pair_tests(pair: PreferencePair, *, where: str = "") -> tuple[list[str], str, list[str]]:
    """(test_list, test_setup_code, test_imports) from `pair.meta`; a one-line error when the tests are missing."""
    tests = pair.meta.get("test_list") if isinstance(pair.meta, dict) else None
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise DataError(where or "pairs", f"pair {pair.id!r}: --source execution needs meta.test_list "
                        "(a non-empty list of assert strings)",
                        hint="give code pairs meta={'task_id':..., 'test_list': [...], 'test_setup_code': ...}; "
                             "see docs/rationales.md")
    imports = pair.meta.get("test_imports") or []
    return tests, pair.meta.get("test_setup_code") or "", list(imports)


def instrument_assert(test: str) -> tuple[str, str | None]:
    """Rewrite `assert lhs == rhs[, msg]` to print repr(lhs) before asserting; returns (source, rhs source)."""
    try:
        tree = ast.parse(test.strip())
    except SyntaxError:
        return test, None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return test, None
    node = tree.body[0].test
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
        return test, None
    lhs, rhs = ast.unparse(node.left), ast.unparse(node.comparators[0])
    source = (
        f"__sa_actual = ({lhs})\n"
        f"print({ACTUAL_MARK!r} + repr(__sa_actual)[:{MAX_REPR}], flush=True)\n"
        f"assert __sa_actual == ({rhs})\n"
    )
    return source, rhs


def assert_programs(solution: str, tests: Sequence[str], setup: str, imports: Sequence[str]
                    ) -> list[tuple[str, str | None]]:
    """One (program, expected-source) per assert: imports, setup, the solution, then that assert."""
    out = []
    for test in tests:
        body, expected = instrument_assert(test)
        parts = [*imports, setup, solution, body]
        out.append(("\n".join(p for p in parts if p) + "\n", expected))
    return out


def exception_of(stderr: str) -> str | None:
    """The final `ExcType: message` line of a traceback in stderr, if any."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if _EXC_LINE.match(line):
            return line[:200]
    return None


def outcome_of(test: str, expected: str | None, result: Any) -> AssertOutcome:
    """Turn a `SandboxResult` into an `AssertOutcome`."""
    actual = None
    for line in (result.stdout or "").splitlines():
        if line.startswith(ACTUAL_MARK):
            actual = line[len(ACTUAL_MARK):]
    if result.status == "passed":
        return AssertOutcome(test, "passed")
    if result.status == "timeout":
        return AssertOutcome(test, "timeout", exception=f"timed out ({result.reason})" if result.reason else
                             "timed out")
    exc = exception_of(result.stderr or "") or (result.reason or "failed")
    return AssertOutcome(test, result.status, exception=exc, actual=actual, expected=expected)


def _quote(test: str) -> str:
    test = " ".join(test.split())
    return f"`{test[:157]}...`" if len(test) > 160 else f"`{test}`"


def _failure(o: AssertOutcome) -> str:
    if o.status == "timeout":
        return f"{_quote(o.test)} times out"
    if o.exception and o.exception.startswith("AssertionError") and o.actual is not None:
        return f"{_quote(o.test)} fails: it returns {o.actual} where {o.expected} is expected"
    return f"{_quote(o.test)} raises {o.exception}"


def describe(role: str, outcomes: Sequence[AssertOutcome]) -> str:
    """One or two sentences about one solution's test outcomes."""
    n, passed = len(outcomes), [o for o in outcomes if o.status == "passed"]
    failed = [o for o in outcomes if o.status != "passed"]
    if not failed:
        return f"The {role} solution passes all {n} tests."
    exceptions = {o.exception for o in failed}
    if len(failed) == n and len(exceptions) == 1 and not any(o.actual for o in failed) \
            and failed[0].status != "timeout" and not (failed[0].exception or "").startswith("AssertionError"):
        return f"The {role} solution fails all {n} tests: every test raises {failed[0].exception}."
    text = f"The {role} solution passes {len(passed)} of {n} tests: " + "; ".join(_failure(o) for o in failed)
    if passed:
        text += "; it passes " + ", ".join(_quote(o.test) for o in passed)
    return text + "."


def execution_rationale(chosen: Sequence[AssertOutcome], rejected: Sequence[AssertOutcome]) -> str:
    return f"{describe('preferred', chosen)} {describe('other', rejected)}"


def execution_generator(pool: Any, *, where: str = "", block: int = 32
                        ) -> Callable[[list[PreferencePair], Callable[[int, str], None]], None]:
    """A rationale generator (see `rationales.fill_rationales`) that runs every pair's tests on a `SandboxPool`.

    Pairs are processed in blocks so progress is saved while a long file runs.  Each pair's per-assert outcomes
    are also kept in `pair.meta["rationale_execution"]`.
    """

    def generate(pairs: list[PreferencePair], on_done: Callable[[int, str], None]) -> None:
        specs = [code_pair_tests(p, where=where) for p in pairs]  # validate everything before running anything
        for start in range(0, len(pairs), block):
            jobs: list[tuple[int, str, str, str | None]] = []  # (pair index, side, test, expected)
            programs: list[str] = []
            for k in range(start, min(start + block, len(pairs))):
                tests, setup, imports = specs[k]
                for side in ("chosen", "rejected"):
                    built = assert_programs(getattr(pairs[k], side), tests, setup, imports)
                    for test, (program, expected) in zip(tests, built, strict=True):
                        jobs.append((k, side, test, expected))
                        programs.append(program)
            results = pool.map(programs)
            by_pair: dict[int, dict[str, list[AssertOutcome]]] = {}
            for (k, side, test, expected), result in zip(jobs, results, strict=True):
                by_pair.setdefault(k, {"chosen": [], "rejected": []})[side].append(outcome_of(test, expected, result))
            for k, sides in by_pair.items():
                pairs[k].meta = {**pairs[k].meta, "rationale_execution": {
                    side: [asdict(o) for o in outs] for side, outs in sides.items()}}
                on_done(k, execution_rationale(sides["chosen"], sides["rejected"]))

    return generate
