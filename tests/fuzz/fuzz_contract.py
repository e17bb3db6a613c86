"""The contract every input must meet, checked through the real CLI entry (`sparsealign.cli.main`, in-process under
click's CliRunner isolation: the same code path as the console script, minus the process start).

    accepted  exit 0, at most 4 lines of warnings, and counts that add up (valid + skipped + duplicates == records)
    rejected  non-zero exit, exactly one error line (click's usage lines aside), naming the input file and the fix
    failure   anything else: a traceback or an exception escaping `main`, more than 4 lines, an error that does not
              name the file, counts that do not add up, a partial output file left behind

Each reader is a `Target`: a hypothesis strategy for its input `Case` plus the command(s) that read it.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from fuzz_inputs import (
    TEXT,
    Case,
    byte_mutations,
    compressed,
    config_seeds,
    placed,
    records,
    seeds,
    serialise,
)
from hypothesis import strategies as st

from sparsealign.cli import main
from sparsealign.settings import data_dir

PLAIN = ("plain",) * 8 + ("odd_suffix", "symlink")
ANY_PLACE = ("plain", "odd_suffix", "symlink", "dangling", "loop", "folder", "mixed_folder", "empty_folder",
             "empty", "device")
NO_COMPRESSION = ("",) * 6 + ("gz",)
ANY_COMPRESSION = ("gz", "gz", "bz2", "xz", "zst")
_USAGE = ("Usage:", "Try '", "warning:")
_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # tmpfs: the atomic writes' fsyncs cost nothing


@dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float  # wall clock
    cpu_seconds: float  # CPU time of this process: what the input costs, whatever else the machine is doing
    crash: str | None = None  # an exception that escaped main(): a traceback in the real process


def run_cli(argv: list[str], env: dict[str, str]) -> Result:
    start, cpu_start = time.perf_counter(), time.process_time()
    crash = None
    with CliRunner().isolation(env=env) as (out, err, _):
        try:
            rc = main(argv)
        except SystemExit as exc:  # click's own exits
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - the contract says none may escape
            if getattr(exc, "stops_fuzzing", False):  # the campaign's own timer, not the command's doing
                raise
            crash, rc = traceback.format_exc(limit=-8), 1
        sys.stdout.flush()
        sys.stderr.flush()
        stdout = out.getvalue().decode("utf-8", "replace")
        stderr = err.getvalue().decode("utf-8", "replace")
    return Result(argv, rc, stdout, stderr, time.perf_counter() - start, time.process_time() - cpu_start, crash)


@dataclass
class Outcome:
    status: str  # accepted | rejected | failure
    detail: str = ""
    results: list[Result] = field(default_factory=list)


def check_lines(res: Result, names: set[str], *, need_fix: bool = True) -> str | None:
    """None when `res` meets the line contract; else what is wrong."""
    if res.crash:
        return f"exception escaped main(): {res.crash.strip().splitlines()[-1][:300]}"
    if "Traceback" in res.stderr or "Traceback" in res.stdout:
        return "traceback printed"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    if len(lines) > 4:
        return f"{len(lines)} lines on stderr"
    if res.rc == 0:
        return None
    errors = [ln for ln in lines if not ln.startswith(_USAGE)]
    if len(errors) != 1:
        return f"exit {res.rc} with {len(errors)} error lines: {res.stderr[:300]!r}"
    line = errors[0]
    if not any(n and n in line for n in names):
        return f"error does not name the input: {line[:300]!r}"
    if need_fix and "fix:" not in line and "Error:" not in line:  # click's usage errors name the option instead
        return f"error gives no fix: {line[:300]!r}"
    return None


def _counts_add_up(rep: dict[str, Any]) -> str | None:
    total = rep["valid"] + sum(rep["skipped"].values()) + rep["duplicates"]
    if total != rep["count"] and rep.get("split") is None:
        return f"counts do not add up: count {rep['count']} != valid {rep['valid']} + skipped {rep['skipped']} + " \
               f"duplicates {rep['duplicates']}"
    return None


def _env(root: Path) -> dict[str, str]:
    return {"SPARSEALIGN_DATA_DIR": str(data_dir()), "SPARSEALIGN_RUNS_DIR": str(root / "runs"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HOME": str(root / "hf")}


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in root.rglob("*") if "runs" not in p.relative_to(root).parts[:1]}


# -- per-kind drivers: run the command(s) on a written case, classify ----------------------------------------------
def drive_data(entry: Path, root: Path, case: Case, flags: list[str], prepare: bool) -> Outcome:
    """`data inspect --json` (and sometimes `data prepare`) on a preference or MBPP input."""
    res = run_cli(["data", "inspect", str(entry), "--json", *flags], _env(root))
    out = Outcome("accepted" if res.rc == 0 else "rejected", results=[res])
    problem = check_lines(res, case.names())
    if problem is None and res.rc == 0:
        try:
            problem = _counts_add_up(json.loads(res.stdout))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            problem = f"--json output unreadable ({exc}): {res.stdout[:200]!r}"
    if problem is None and prepare:
        before = _tree(root)
        prep = run_cli(["data", "prepare", "--name", "fz", str(entry), "--json", *flags], _env(root))
        out.results.append(prep)
        problem = check_lines(prep, case.names())
        if problem is None and (prep.rc == 0) != (res.rc == 0):
            problem = f"inspect exit {res.rc} but prepare exit {prep.rc}: {prep.stderr[:200]!r}"
        data = root / "runs" / "fz" / "data"
        left = [str(p) for p in data.rglob("*")] if data.exists() else []
        if problem is None and prep.rc != 0 and left:
            problem = f"partial output after a failed prepare: {left[:3]}"
        if problem is None and prep.rc == 0:
            stats = [json.loads(p.read_text()) for p in data.glob("*/stats.json")]
            if len(stats) != 1 or stats[0]["valid"] != sum(stats[0]["splits"].values()) and \
                    stats[0]["kind"] == "preference":
                problem = f"prepare wrote inconsistent stats: {stats}"
        if problem is None and _tree(root) != before:
            problem = "prepare changed the input files"
    return Outcome("failure", problem, out.results) if problem else out


def drive_config(entry: Path, root: Path, case: Case, flags: list[str], prepare: bool) -> Outcome:
    """A study config: `study --config FILE plan --json`."""
    res = run_cli(["study", "--config", str(entry), "plan", "--json"], _env(root))
    problem = check_lines(res, case.names(), need_fix=False)
    if problem is None and res.rc == 0:
        try:
            json.loads(res.stdout)
        except json.JSONDecodeError:
            problem = f"plan --json output unreadable: {res.stdout[:200]!r}"
    return Outcome("failure", problem, [res]) if problem else Outcome("accepted" if res.rc == 0 else "rejected",
                                                                      results=[res])


def drive_set(entry: Path, root: Path, case: Case, flags: list[str], prepare: bool) -> Outcome:
    """`--set KEY=VALUE` values: `study --set ... plan --json`; errors must name --set (and the key)."""
    res = run_cli(["study", *[a for f in flags for a in ("--set", f)], "plan", "--json"], _env(root))
    keys = {f.split("=", 1)[0].strip() for f in flags} - {""}
    problem = check_lines(res, {"--set", *keys}, need_fix=False)
    return Outcome("failure", problem, [res]) if problem else Outcome("accepted" if res.rc == 0 else "rejected",
                                                                      results=[res])


def drive_samples(entry: Path, root: Path, case: Case, flags: list[str], prepare: bool) -> Outcome:
    """`eval winrate --candidate FILE --baseline GOOD`: reading ends in the (missing) reward model when accepted."""
    base = root / "baseline.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in seeds("samples")))
    model = root / "no-reward-model"
    res = run_cli(["eval", "winrate", "--judge", "reward-model", "--reward-model", str(model),
                   "--candidate", str(entry), "--baseline", str(base)], _env(root))
    problem = check_lines(res, case.names() | {"baseline.jsonl", model.name})
    accepted = res.rc != 0 and model.name in res.stderr
    if problem:
        return Outcome("failure", problem, [res])
    return Outcome("accepted" if accepted or res.rc == 0 else "rejected", results=[res])


def drive_rationales(entry: Path, root: Path, case: Case, flags: list[str], prepare: bool) -> Outcome:
    """`rationales generate --out FILE` resumes from an existing rationale file; a failure must leave it as it was."""
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in seeds("generic")))
    model = root / "no-model"
    before = _tree(root)
    res = run_cli(["rationales", "generate", "--data", str(data), "--out", str(entry), "--source", "hf",
                   "--model", str(model)], _env(root))
    problem = check_lines(res, case.names() | {model.name})
    if problem is None and _tree(root) != before:
        problem = "the rationale file changed although the run failed"
    if problem:
        return Outcome("failure", problem, [res])
    return Outcome("accepted" if model.name in res.stderr else "rejected", results=[res])


# -- targets ---------------------------------------------------------------------------------------------------------
FORMAT_FLAGS = ("hh-rlhf", "ultrafeedback", "orca-intel", "openai-preference", "generic", "trl-explicit",
                "trl-implicit", "mbpp", "mbpp-sanitized")


@dataclass
class Target:
    name: str
    kind: str  # seed kind
    containers: tuple[str, ...]
    drive: Callable[..., Outcome]
    compression: tuple[str, ...] = NO_COMPRESSION
    places: tuple[str, ...] = PLAIN


@st.composite
def data_case(draw: st.DrawFn, target: Target) -> tuple[Case, list[str], bool]:
    container = draw(st.sampled_from(target.containers))
    blob = serialise(draw(records(target.kind)), container)
    blob = draw(byte_mutations(blob))
    blob, comp = draw(compressed(blob, target.compression))
    case = draw(placed(blob, f"in.{container}{comp}", target.places))
    flags = draw(st.sampled_from([[], [], ["--skip-invalid"], ["--strict"], ["--format", "x"]]))
    if flags[:1] == ["--format"]:
        flags = ["--format", draw(st.sampled_from(FORMAT_FLAGS))]
    return case, flags, draw(st.integers(0, 7)) == 0  # `data prepare` too, on one input in 8


@st.composite
def config_case(draw: st.DrawFn, target: Target) -> tuple[Case, list[str], bool]:
    name = draw(st.sampled_from(sorted(config_seeds())))
    recs = draw(records([config_seeds()[name]]))
    blob = serialise(recs, "yaml") if recs else b""
    blob = draw(byte_mutations(blob))
    return draw(placed(blob, name, target.places)), [], False


SET_KEYS = ("seed", "name", "sizes", "methods", "align.beta", "align.lora", "sparsity.targets", "sparsity.modes",
            "eval.mbpp_limit", "executor.kind", "data_fractions", "learning_rate", "", "a..b", "seed.x")
SET_VALUES = st.one_of(TEXT, st.sampled_from([
    "1", "-1", "0.5", "1e999", ".nan", "[0.5, 0.9]", "[", "{", "{a: 1, a: 2}", "&a [*a]", "true", "null", "~",
    "[" * 2000 + "]" * 2000, "x" * 100_000, "!!python/object:os.system ls", "{dpo: 1}", "[dpo, orpo]"]))


@st.composite
def set_case(draw: st.DrawFn, target: Target) -> tuple[Case, list[str], bool]:
    valid = st.sampled_from([("seed", "3"), ("align.beta", "0.2"), ("sparsity.targets", "[0.5]"), ("name", "x")])
    pairs = draw(st.lists(st.one_of(valid, st.tuples(st.one_of(st.sampled_from(SET_KEYS), TEXT), SET_VALUES)),
                          min_size=1, max_size=3))
    sep = draw(st.sampled_from(["=", "=", ":", ""]))
    return Case(entry="."), [f"{k}{sep}{v}" for k, v in pairs], False


TARGETS: dict[str, Target] = {t.name: t for t in [
    Target("hh-rlhf", "hh-rlhf", ("jsonl",), drive_data, compression=("gz", "gz", "")),
    Target("ultrafeedback", "ultrafeedback", ("jsonl", "json"), drive_data),
    Target("orca-openai", "openai-preference", ("jsonl",), drive_data),
    Target("orca-intel", "orca-intel", ("jsonl", "csv", "parquet"), drive_data),
    Target("trl-implicit", "trl-implicit", ("jsonl", "json"), drive_data),
    Target("trl-implicit-standard", "trl-implicit-standard", ("jsonl", "csv"), drive_data),
    Target("trl-explicit", "trl-explicit", ("jsonl", "json", "parquet"), drive_data),
    Target("generic-jsonl", "generic", ("jsonl",), drive_data),
    Target("generic-json", "generic", ("json",), drive_data),
    Target("generic-csv", "generic", ("csv",), drive_data),
    Target("generic-parquet", "generic", ("parquet",), drive_data),
    Target("mbpp", "mbpp", ("jsonl",), drive_data),
    Target("mbpp-sanitized", "mbpp-sanitized", ("json",), drive_data),
    Target("compressed", "generic", ("jsonl", "json", "csv", "parquet"), drive_data, compression=ANY_COMPRESSION),
    Target("files", "generic", ("jsonl", "csv"), drive_data, compression=("", "gz"), places=ANY_PLACE),
    Target("samples", "samples", ("jsonl", "json"), drive_samples, compression=("", "gz")),
    Target("rationale-file", "generic", ("jsonl",), drive_rationales),
    Target("study-config", "config", ("yaml",), drive_config, places=PLAIN + ("empty", "device", "empty_folder")),
    Target("set-values", "", (), drive_set),
]}


def strategy(target: Target) -> st.SearchStrategy[tuple[Case, list[str], bool]]:
    if target.drive is drive_config:
        return config_case(target)
    if target.drive is drive_set:
        return set_case(target)
    return data_case(target)


def run_case(target: Target, case: Case, flags: list[str], prepare: bool) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="fuzz-", dir=_TMP) as tmp:
        root = Path(tmp)
        entry = case.write(root) if case.entry != "." else root
        return target.drive(entry, root, case, flags, prepare)
