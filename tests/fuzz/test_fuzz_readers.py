"""Property tests: every reader, through the real CLI entry, on inputs broken at every layer (see fuzz_inputs.py),
meets the contract of fuzz_contract.py.  Bounded for CI: FUZZ_EXAMPLES per reader (default 150: ~90 s of CPU for
all 19 readers on this machine's cores; 300 took ~170 s), derandomized, so
a run is reproducible; `make fuzz` runs the long campaign (tests/fuzz/campaign.py)."""

from __future__ import annotations

import os

import pytest
from fuzz_contract import TARGETS, run_case, strategy
from hypothesis import HealthCheck, given, settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_reader_contract(name):
    target = TARGETS[name]

    @FUZZ
    @given(strategy(target))
    def check(drawn):
        case, flags, prepare = drawn
        outcome = run_case(target, case, flags, prepare)
        assert outcome.status != "failure", (f"{name}: {outcome.detail}\nnotes: {case.notes}\n"
                                            f"argv: {[r.argv for r in outcome.results]}")

    check()


@pytest.mark.parametrize("name", ["compressed", "files", "trl-implicit"])
def test_in_process_runs_match_the_console_script(cli, name):
    """The harness runs `main()` in process for speed; on a few of its inputs the real console script (a subprocess)
    must answer the same: exit code, stdout and stderr."""
    import tempfile
    from pathlib import Path

    from fuzz_contract import _env, run_cli

    @settings(FUZZ, max_examples=6)
    @given(strategy(TARGETS[name]))
    def check(drawn):
        case, flags, _ = drawn
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            argv = ["data", "inspect", str(case.write(root)), "--json", *flags]
            inside = run_cli(argv, _env(root))
            real = cli(*argv, env=_env(root), timeout=120)
            assert (real.returncode, real.stdout, real.stderr) == (inside.rc, inside.stdout, inside.stderr)

    check()
