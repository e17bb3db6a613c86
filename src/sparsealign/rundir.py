"""Run directories: `runs/<name>/` holds the resolved configs, artifacts, logs and the ledger.

Layout:
    runs/<name>/config/<stage>.yaml   resolved config of each stage that ran here (hash checked on re-run)
    runs/<name>/<stage>/...           that stage's artifacts
    runs/<name>/logs/<stage>.log      log file
    runs/<name>/ledger.sqlite         one row per stage/cell (see ledger.py)
A stage run alone from the CLI and the same stage inside `sparsealign study` write the same files.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel

from sparsealign.config import config_hash, diff_configs, dump_yaml
from sparsealign.errors import UserError
from sparsealign.io import atomic_write_text
from sparsealign.ledger import Ledger
from sparsealign.settings import runs_dir


def check_run_name(name: str) -> None:
    if not name or "/" in name or name.startswith("."):
        raise UserError(f"run name {name!r} is not a plain directory name", hint="use e.g. --name my-run")


@dataclass
class RunDir:
    root: Path
    ledger: Ledger
    log_handlers: list[logging.Handler] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        name: str,
        stage: str,
        config: BaseModel,
        *,
        runs_root: str | Path | None = None,
        restart: bool = False,
    ) -> RunDir:
        """Open (or create) `runs/<name>`, record `stage`'s config and refuse a silently changed one."""
        check_run_name(name)
        root = runs_dir(runs_root) / name
        if restart and root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        cfg_path = root / "config" / f"{stage}.yaml"
        new = config.model_dump(mode="json")
        if cfg_path.exists():
            old = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
            if config_hash(old) != config_hash(new):
                changed = ", ".join(diff_configs(old, new)[:8]) or "(values)"
                raise UserError(
                    f"{cfg_path}: run '{name}' was started with a different {stage} config (changed: {changed})",
                    hint=f"use a new --name, or --restart to discard runs/{name}",
                )
        else:
            atomic_write_text(cfg_path, dump_yaml(config))
        run = cls(root=root, ledger=Ledger(root / "ledger.sqlite"))
        run.attach_log(stage)
        return run

    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def attach_log(self, stage: str) -> logging.Handler:
        """Log the `sparsealign` logger to logs/<stage>.log until `close()` (one handler per file per process:
        a verb called many times in one process -- a notebook, the fuzzing harness -- must not pile up open files,
        which it did, ~9,000 after 30,000 in-process calls)."""
        log_path = self.path("logs", f"{stage}.log").resolve()
        logger = logging.getLogger("sparsealign")
        logger.setLevel(logging.INFO)
        for existing in logger.handlers:
            if getattr(existing, "baseFilename", None) == str(log_path):
                return existing
        handler = logging.FileHandler(log_path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        self.log_handlers.append(handler)
        return handler

    def close(self) -> None:
        """Close the ledger and the log files this run attached."""
        self.ledger.close()
        logger = logging.getLogger("sparsealign")
        for handler in self.log_handlers:
            logger.removeHandler(handler)
            handler.close()
        self.log_handlers.clear()
