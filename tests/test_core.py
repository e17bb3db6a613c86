"""Foundation pieces: configs, the ledger, run directories, atomic writes, and a light CLI start-up."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from typing import Literal

import pytest
from pydantic import Field

from sparsealign.config import StrictModel, config_hash, load_config, parse_overrides
from sparsealign.errors import ConfigError, UserError
from sparsealign.io import atomic_path, atomic_write_json
from sparsealign.ledger import Ledger
from sparsealign.rundir import RunDir


class Inner(StrictModel):
    beta: float = Field(0.1, gt=0)
    method: Literal["dpo", "orpo", "simpo"] = "dpo"


class Outer(StrictModel):
    name: str = "x"
    align: Inner = Inner()
    sizes: list[int] = [1, 2]


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["align.beta=0.5", "sizes=[3, 4]", "name=run"]) == {
        "align": {"beta": 0.5}, "sizes": [3, 4], "name": "run"}
    cfg = load_config(Outer, overrides=["align.beta=0.5", "align.method=orpo"])
    assert cfg.align.beta == 0.5 and cfg.align.method == "orpo"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("align:\n  beta: 0.2\nsizes: [7]\n")
    cfg = load_config(Outer, path, ["sizes=[8, 9]"])
    assert cfg.align.beta == 0.2 and cfg.sizes == [8, 9]


def test_bad_enum_names_file_field_and_allowed_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("align:\n  method: ppo\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    msg = str(err.value)
    assert str(path) in msg and "align.method" in msg and "'dpo'" in msg and "'simpo'" in msg


def test_unknown_field_lists_allowed_fields(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(Outer, overrides=["align.bta=1"])
    assert "align.bta" in str(err.value) and "beta" in str(err.value)


def test_bad_value_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="align.beta"):
        load_config(Outer, overrides=["align.beta=-1"])
    path = tmp_path / "bad.yaml"
    path.write_text("align: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(Outer, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_sensitive():
    assert config_hash(Outer()) == config_hash(Outer())
    assert config_hash(Outer()) != config_hash(Outer(name="y"))


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_ledger_cells_resume_and_detect_config_change(tmp_path):
    path = tmp_path / "ledger.sqlite"
    calls = []
    with Ledger(path) as ledger:
        row, ran = ledger.run_cell("s", "a", "h1", lambda: calls.append(1) or ({"acc": 0.5}, {"model": "m"}))
        assert ran and row.status == "done" and row.metrics == {"acc": 0.5} and row.artifacts == {"model": "m"}
        with pytest.raises(ValueError):
            ledger.run_cell("s", "b", "h1", lambda: (_ for _ in ()).throw(ValueError("boom")))
        assert ledger.get("s", "b").status == "failed" and "boom" in ledger.get("s", "b").error
    with Ledger(path) as ledger:  # re-open: the finished cell is skipped, the failed one re-runs
        _, ran = ledger.run_cell("s", "a", "h1", lambda: calls.append(2) or {})
        assert not ran and calls == [1]
        _, ran = ledger.run_cell("s", "b", "h1", lambda: {"ok": 1})
        assert ran and ledger.get("s", "b").attempts == 2
        with pytest.raises(UserError, match="different config|was finished with config"):
            ledger.run_cell("s", "a", "h2", lambda: {})
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rundir_refuses_changed_config(tmp_path):
    run = RunDir.open("r1", "align", Outer(), runs_root=tmp_path)
    assert (tmp_path / "r1" / "config" / "align.yaml").exists()
    assert (tmp_path / "r1" / "logs" / "align.log").exists()
    run.close()
    RunDir.open("r1", "align", Outer(), runs_root=tmp_path).close()  # same config: fine
    with pytest.raises(UserError, match="align.beta"):
        RunDir.open("r1", "align", Outer(align=Inner(beta=0.3)), runs_root=tmp_path)
    RunDir.open("r1", "align", Outer(align=Inner(beta=0.3)), runs_root=tmp_path, restart=True).close()




def test_rundir_log_files_are_closed_with_the_run(tmp_path):
    """A verb run many times in one process (a notebook, the fuzzing harness) must not pile up open log files:
    30,000 in-process calls once held ~9,000 descriptors of deleted logs."""
    import logging
    import os

    logger = logging.getLogger("sparsealign")
    handlers, fds = list(logger.handlers), len(os.listdir("/proc/self/fd"))
    for i in range(60):
        run = RunDir.open(f"r{i % 3}", "data", Outer(), runs_root=tmp_path)
        logging.getLogger("sparsealign.test").info("call %d", i)
        run.close()
    assert logger.handlers == handlers and len(os.listdir("/proc/self/fd")) <= fds
    assert "call 57" in (tmp_path / "r0" / "logs" / "data.log").read_text()  # and the log was written


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"], ["sandbox", "--help"]])
def test_light_commands_do_not_import_torch(args):
    code = (
        "import sys; from sparsealign.cli import main\n"
        f"rc = main({args!r})\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\nsys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_every_verb_has_useful_help(cli):
    top = cli("--help")
    assert top.returncode == 0
    for verb in ["data", "align", "rationales", "sparsify", "sandbox", "eval", "study", "pretrain", "convert"]:
        assert verb in top.stdout, verb
        res = cli(verb, "--help")
        assert res.returncode == 0 and len(res.stdout.splitlines()) > 3, (verb, res.stdout, res.stderr)


def test_cache_defaults_to_the_user_cache_and_the_env_overrides_it(tmp_path, monkeypatch):
    """Issue 23 item 5: the default cache is the user's (XDG), never the package or the checkout."""
    from pathlib import Path

    import sparsealign
    from sparsealign.settings import CACHE_DIR_ENV, cache_dir

    monkeypatch.delenv(CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    default = cache_dir()
    assert default.is_relative_to(tmp_path / "xdg"), default
    checkout = Path(sparsealign.__file__).resolve().parents[2]  # src/sparsealign/__init__.py -> checkout (or prefix)
    assert not default.resolve().is_relative_to(checkout)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
