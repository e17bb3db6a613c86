"""Long fuzzing campaign (`make fuzz`): N inputs per reader, a table of inputs tried / accepted / rejected cleanly /
failures, and each failure's minimal input (shrunk by hypothesis) saved under fuzz-failures/<reader>/<n>/.

    python tests/fuzz/campaign.py --examples 10000 [--readers hh-rlhf,samples] [--seed 1] [--out fuzz-failures]

Besides the contract of fuzz_contract.py, an input that takes more than 3 s + 3 s per MB of CPU time counts as a
failure (`slow`; CPU time, since wall time on a shared machine measures the neighbours), and one that runs past
120 s of wall time is stopped and tried once more with 240 s (`hang` when that also runs out: a blocked read uses
no CPU, and a busy machine can starve a process for minutes).  After a failure the campaign starts a new search with
the next seed, so it keeps going until N inputs have been tried.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_contract import TARGETS, Outcome, drive_rationales, drive_samples, run_case, strategy  # noqa: E402
from fuzz_inputs import Case, seeds, serialise  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

HANG_S = 120
CHUNK = 100  # inputs per hypothesis search (each with its own seed); the time budget is checked between them


class _Hang(BaseException):
    stops_fuzzing = True


def _alarm(signum: int, frame: object) -> None:
    raise _Hang()


def _size_mb(case: Case) -> float:
    return sum(len(b) for b in case.files.values()) / 1e6


def judge(case: Case, flags: list[str], prepare: bool, target_name: str) -> Outcome:
    """run_case with the time limits of the campaign."""
    signal.signal(signal.SIGALRM, _alarm)
    for attempt in (1, 2):  # a second try tells a hang from a process starved of CPU on a busy machine
        signal.alarm(HANG_S * attempt)
        try:
            outcome = run_case(TARGETS[target_name], case, flags, prepare)
            break
        except _Hang:
            if attempt == 2:
                return Outcome("failure", f"hang: no answer after {HANG_S} s, twice")
        finally:
            signal.alarm(0)
    limit = 3 + 3 * _size_mb(case)
    slowest = max((r.cpu_seconds for r in outcome.results), default=0.0)
    if outcome.status != "failure" and slowest > limit:
        return Outcome("failure", f"slow: {slowest:.1f} s CPU for {_size_mb(case):.2f} MB (limit {limit:.1f} s)",
                       outcome.results)
    return outcome


def save_failure(out: Path, reader: str, number: int, case: Case, flags: list[str], outcome: Outcome) -> Path:
    where = out / reader / str(number)
    (where / "input").mkdir(parents=True, exist_ok=True)
    case.write(where / "input")
    report = {"reader": reader, "detail": outcome.detail, "notes": case.notes, "entry": case.entry, "flags": flags,
              "runs": [{"argv": r.argv, "rc": r.rc, "stderr": r.stderr[-3000:], "crash": r.crash}
                       for r in outcome.results]}
    (where / "failure.json").write_text(json.dumps(report, indent=2))
    return where


def search(reader: str, examples: int, run_seed: int, counts: Counter[str]) -> tuple[int, tuple | None]:
    """One hypothesis search of up to `examples` inputs; stops at the first failure, which it shrinks.
    Returns (inputs tried before the failure, the minimal failing (case, flags, outcome) or None)."""
    state: dict[str, Any] = {"tried": 0, "failed": False, "last": None}

    @settings(max_examples=examples, deadline=None, database=None, derandomize=False, report_multiple_bugs=False,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @seed(run_seed)
    @given(strategy(TARGETS[reader]))
    def check(drawn: tuple[Case, list[str], bool]) -> None:
        case, flags, prepare = drawn
        outcome = judge(case, flags, prepare, reader)
        if not state["failed"]:  # after the first failure, hypothesis is shrinking: not new inputs
            state["tried"] += 1
            counts[outcome.status] += 1
        if outcome.status == "failure":
            state["failed"], state["last"] = True, (case, flags, outcome)
            raise AssertionError(outcome.detail)

    try:
        check()
    except Exception:  # noqa: BLE001 - hypothesis re-raises the minimal failing example's error
        if state["last"] is None:
            raise
    return state["tried"], state["last"]


def campaign(reader: str, examples: int, first_seed: int, out: Path, budget_s: float = float("inf")) -> dict[str, Any]:
    """Up to `examples` inputs for `reader`, in searches of at most CHUNK inputs (one seed each), until done or
    `budget_s` seconds have passed."""
    target = TARGETS[reader]
    if target.drive in (drive_samples, drive_rationales):  # one-time imports (torch, to load the model) are no hang
        name = f"warm.{target.containers[0]}"
        run_case(target, Case(entry=name, files={name: serialise(seeds(target.kind), target.containers[0])}), [],
                 False)
    counts: Counter[str] = Counter()
    saved: list[str] = []
    remaining, run_seed, start = examples, first_seed, time.perf_counter()
    while remaining > 0 and time.perf_counter() - start < budget_s:
        chunk = min(remaining, CHUNK)
        tried, failure = search(reader, chunk, run_seed, counts)
        if failure is not None:
            case, flags, outcome = failure
            saved.append(str(save_failure(out, reader, len(saved) + 1, case, flags, outcome)))
            print(f"  {reader}: failure {len(saved)}: {outcome.detail[:200]} -> {saved[-1]}", file=sys.stderr)
        elif tried < chunk:  # the strategy ran out of distinct inputs
            break
        remaining -= max(tried, 1)
        run_seed += 1
    return {"reader": reader, "tried": sum(counts.values()), "accepted": counts["accepted"],
            "rejected": counts["rejected"], "failures": counts["failure"], "seconds": time.perf_counter() - start,
            "saved": saved}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| reader | inputs tried | accepted | rejected cleanly | failures | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['reader']} | {r['tried']} | {r['accepted']} | {r['rejected']} | {r['failures']} | "
                     f"{r['seconds']:.0f} |")
    total = {k: sum(r[k] for r in rows) for k in ("tried", "accepted", "rejected", "failures", "seconds")}
    lines.append(f"| **all** | {total['tried']} | {total['accepted']} | {total['rejected']} | {total['failures']} | "
                 f"{total['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=int(os.environ.get("FUZZ_EXAMPLES", "10000")),
                        help="inputs per reader (env FUZZ_EXAMPLES; default 10000)")
    parser.add_argument("--readers", default="", help=f"comma-separated subset of: {', '.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FUZZ_SEED", "1")), help="first seed")
    parser.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="where failing inputs are saved")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--budget-s", type=float, default=float("inf"),
                        help="stop a reader after this many seconds (the table then shows how many were tried)")
    args = parser.parse_args()
    readers = [r for r in args.readers.split(",") if r] or list(TARGETS)
    unknown = [r for r in readers if r not in TARGETS]
    if unknown:
        parser.error(f"unknown reader(s) {unknown}; choose from {', '.join(TARGETS)}")
    rows = []
    for reader in readers:
        rows.append(campaign(reader, args.examples, args.seed, args.out, args.budget_s))
        r = rows[-1]
        print(f"{reader}: {r['tried']} tried, {r['accepted']} accepted, {r['rejected']} rejected cleanly, "
              f"{r['failures']} failures ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    print(f"fuzz campaign {time.strftime('%Y-%m-%d')}: {args.examples} inputs per reader, seed {args.seed}")
    print(table(rows))
    return 1 if any(r["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
