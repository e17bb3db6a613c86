"""Issue 23 item 6: what the docs say works, `--dry-run` does what its help says, and bad input is reported before
any model loads (the model path given here does not exist, so the error naming the input shows the input was
checked first)."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from sparsealign.config import parse_overrides

REPO = Path(__file__).resolve().parents[1]
HH = "hh-rlhf/helpful-base/test.jsonl.gz"
NO_MODEL = "/nonexistent/model"


def test_the_quickstart_lora_settings_work_as_written(cli):
    text = (REPO / "docs" / "quickstart.md").read_text(encoding="utf-8")
    phrase = re.search(r"`(--set lora=true --set lora_r=\d+)`", text).group(1)
    res = cli("align", "--model", "m", "--data", HH, *shlex.split(phrase), "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["config"]["lora"]["r"] == int(phrase.rsplit("=", 1)[1])


def test_a_switched_on_section_takes_fields_in_either_order():
    assert parse_overrides(["lora=true", "lora.r=16"]) == {"lora": {"r": 16}}
    assert parse_overrides(["lora.r=16", "lora=true"]) == {"lora": {"r": 16}}
    with pytest.raises(Exception, match="set both as a value and as a section"):
        parse_overrides(["lora=false", "lora.r=16"])


def test_dry_run_prints_the_resolved_config(cli):
    res = cli("align", "--model", "m", "--data", HH, "--set", "lora=true", "--set", "beta=0.2", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert re.search(r"^beta: 0\.2$", res.stdout, re.M) and re.search(r"^lora:\n  r: 16$", res.stdout, re.M)
    assert "config valid: dpo on m" in res.stdout and "dry run: nothing trained" in res.stdout


@pytest.fixture
def broken(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b"\n', encoding="utf-8")
    return path


@pytest.mark.parametrize("case", ["align-broken", "align-split", "align-missing", "preference-broken",
                                  "preference-split", "mbpp-missing-samples", "mbpp-missing-data"])
def test_bad_input_is_reported_before_any_model_loads(cli, broken, tmp_path, case):
    missing = str(tmp_path / "missing.jsonl")
    args, needle = {
        "align-broken": (["align", "--data", str(broken)], "broken.jsonl:1: invalid JSON"),
        "align-split": (["align", "--data", HH, "--set", "data_split=bogus"], "not 'bogus'"),
        "align-missing": (["align", "--data", missing], "missing.jsonl: file not found"),
        "preference-broken": (["eval", "preference", "--method", "simpo", "--data", str(broken)],
                              "broken.jsonl:1: invalid JSON"),
        "preference-split": (["eval", "preference", "--method", "simpo", "--data", HH, "--split", "bogus"],
                             "not 'bogus'"),
        "mbpp-missing-samples": (["eval", "mbpp", "--samples", missing], "missing.jsonl: file not found"),
        "mbpp-missing-data": (["eval", "mbpp", "--data", missing], "missing.jsonl: file not found"),
    }[case]
    model = [] if case == "mbpp-missing-samples" else ["--model", NO_MODEL]
    res = cli(*args, *model)
    assert_one_line_error(res, needle)
    assert NO_MODEL not in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [
    ["align", "--model", NO_MODEL, "--data", "BROKEN"],
    ["eval", "preference", "--method", "simpo", "--model", NO_MODEL, "--data", "BROKEN"],
    ["eval", "mbpp", "--model", NO_MODEL, "--data", "MISSING"],
])
def test_bad_input_fails_before_torch_is_imported(broken, tmp_path, data_dir, args):
    """Why the errors above come in about a second: the input is read by light modules, torch is never imported."""
    import subprocess
    import sys

    argv = [{"BROKEN": str(broken), "MISSING": str(tmp_path / "missing.jsonl")}.get(a, a) for a in args]
    code = ("import sys; from sparsealign.cli import main; rc = main(sys.argv[1:]); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir)})
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and NO_MODEL not in proc.stderr
