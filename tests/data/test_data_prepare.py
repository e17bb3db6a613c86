"""`data prepare`: files per source, resume by ledger cell, and a real SIGKILL mid-run followed by a resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from conftest import assert_one_line_error, sparsealign_exe
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs


def _cells(ledger: Path) -> dict[str, tuple[str, int]]:
    """cell -> (status, attempts), read with a separate read-only connection as a progress view would."""
    if not ledger.exists():
        return {}
    con = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5)
    try:
        return {c: (s, a) for c, s, a in con.execute("SELECT cell, status, attempts FROM cells WHERE stage='data'")}
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        con.close()


def test_prepare_writes_normalised_splits_and_skips_done_cells(cli, tmp_path):
    res = cli("data", "prepare", "--name", "r", "orca_dpo_pairs/validation.jsonl", "mbpp/sanitized-mbpp.json",
              "--eval-fraction", "0.2", "--seed", "3", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    root = tmp_path / "runs" / "r"
    orca = root / "data" / "orca_dpo_pairs-validation"
    train, ev = load_pairs(orca / "train.jsonl").pairs, load_pairs(orca / "eval.jsonl").pairs
    original = load_pairs("orca_dpo_pairs/validation.jsonl").pairs
    assert sorted(p.id for p in train + ev) == sorted(p.id for p in original)
    assert {p.id: p for p in train + ev} == {p.id: p for p in original}  # lossless through the generic format
    stats = json.loads((orca / "stats.json").read_text())
    assert stats["splits"] == {"train": len(train), "eval": len(ev)} and stats["count"] == 284
    assert abs(len(ev) - 0.2 * len(original)) <= 3
    mbpp = root / "data" / "mbpp-sanitized-mbpp"
    test_rows = [json.loads(x) for x in (mbpp / "test.jsonl").read_text().splitlines()]
    assert len(test_rows) == 257 and test_rows == [t.to_dict() for t in load_mbpp("mbpp/sanitized-mbpp.json",
                                                                                  split="test")]
    assert all(c["ran"] for c in out["cells"].values())
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.jsonl")}

    again = cli("data", "prepare", "--name", "r", "orca_dpo_pairs/validation.jsonl", "mbpp/sanitized-mbpp.json",
                "--eval-fraction", "0.2", "--seed", "3", "--json")
    assert again.returncode == 0 and not any(c["ran"] for c in again.json()["cells"].values())
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jsonl")} == mtimes
    assert set(_cells(root / "ledger.sqlite").values()) == {("done", 1)}

    changed = cli("data", "prepare", "--name", "r", "orca_dpo_pairs/validation.jsonl", "mbpp/sanitized-mbpp.json",
                  "--eval-fraction", "0.2", "--seed", "4")
    assert_one_line_error(changed, "different data config", "seed")


def test_sigkill_mid_run_then_resume(cli, tmp_path, data_dir):
    """Cells 1-2 finish, cell 3 reads a FIFO nobody writes to, so the run is provably mid-way when it is killed
    (no race with a fast machine). The re-run skips cells 1-2 untouched, redoes cell 3 and finishes cell 4."""
    slow = tmp_path / "slow.jsonl"
    os.mkfifo(slow)
    sources = ["orca_dpo_pairs/validation.jsonl", "hh-rlhf/helpful-base/test.jsonl.gz", "slow.jsonl",
               "mbpp/mbpp.jsonl"]
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_RUNS_DIR": str(tmp_path / "runs")}
    proc = subprocess.Popen([*sparsealign_exe(), "data", "prepare", "--name", "k", *sources], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    ledger = tmp_path / "runs" / "k" / "ledger.sqlite"
    data = tmp_path / "runs" / "k" / "data"
    deadline = time.monotonic() + 120
    try:  # wait until cell 3 is in flight: marked running and its temp output directory exists
        while _cells(ledger).get("slow") != ("running", 1) or not list(data.glob(".slow.*.tmp")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, f"prepare did not reach the third cell: {_cells(ledger)}"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    state = _cells(ledger)
    assert state == {"orca_dpo_pairs-validation": ("done", 1), "hh-rlhf-helpful-base-test": ("done", 1),
                     "slow": ("running", 1)}
    assert not (data / "slow").exists() and not (data / "mbpp-mbpp").exists()
    finished = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file() and ".tmp" not in str(p)}
    assert len(finished) == 6

    slow.unlink()  # the slow source becomes an ordinary file
    slow.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                            for i in range(30)))
    res = cli("data", "prepare", "--name", "k", *sources)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("already done, skipped") == 2
    assert _cells(ledger) == {"orca_dpo_pairs-validation": ("done", 1), "hh-rlhf-helpful-base-test": ("done", 1),
                              "slow": ("done", 2), "mbpp-mbpp": ("done", 1)}
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished cells were not rewritten
    assert len(load_pairs(data / "slow" / "train.jsonl").pairs) + len(load_pairs(data / "slow" / "eval.jsonl").pairs) == 30
    assert len((data / "mbpp-mbpp" / "test.jsonl").read_text().splitlines()) == 500
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temp directory left behind


def test_data_dir_from_config_and_env_precedence(cli, tmp_path):
    root = tmp_path / "mydata"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "p.jsonl").write_text("".join(
        json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(10)))
    res = cli("data", "prepare", "--name", "c", "--set", f"data_dir={root}", "mine/p.jsonl", "--json",
              env={"SPARSEALIGN_DATA_DIR": ""})
    assert res.returncode == 0, res.stderr
    assert res.json()["cells"]["mine-p"]["valid"] == 10
    # the env var (and the --data-dir flag, which sets it) wins over the config value
    res = cli("data", "prepare", "--name", "c2", "--set", f"data_dir={root}", "mine/p.jsonl",
              env={"SPARSEALIGN_DATA_DIR": str(tmp_path / "other")})
    assert_one_line_error(res, "mine/p.jsonl", "not found", str(tmp_path / "other"))
