"""What each study cell does: thin glue over the stage APIs, reading and writing files in the run directory.

    pretrain  -> pretrain/family.json                     (paths of the base models)
    pairs     -> pairs/<size>/{train,heldout_hh,heldout_uf,heldout_code}.jsonl
    align     -> align/<size>/<method>/<frac>/model        (written by `sparsealign.align.engine.run_align`)
    calibrate -> sparse/<size>/<method>/t<target>/         (thresholds, predictors: `sparsealign.sparse`)
    eval      -> eval/<size>/<method>/<frac>/<mode>/<s>/{metrics.json,items.json,trace.json,mbpp.parquet}

Every cell is deterministic given the study seed (speed figures aside), so a killed and resumed study ends with the
same metrics as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsealign.data.records import PreferencePair
from sparsealign.io import atomic_write_json
from sparsealign.study.cells import BASE, Cell, frac_tag, sizes_of
from sparsealign.study.config import RATIONALE_METHODS, StudyConfig

log = logging.getLogger("sparsealign.study")
REFERENCE_METHODS = {"dpo", "rdpo"}


@dataclass
class Study:
    cfg: StudyConfig
    root: Path

    # -- paths -------------------------------------------------------------------------------------------------
    def pairs_dir(self, size: str) -> Path:
        return self.root / "pairs" / size

    def model_path(self, size: str, method: str, frac: float) -> str:
        if method == BASE:
            return json.loads((self.root / "pretrain" / "family.json").read_text())["paths"][size]
        return str(self.root / "align" / size / method / frac_tag(frac) / "model")

    def artifacts_dir(self, size: str, method: str, target: float) -> Path:
        return self.root / "sparse" / size / method / f"t{target:.2f}"

    def eval_dir(self, cell: Cell) -> Path:
        return self.root / "eval" / cell.key

    # -- dispatch ----------------------------------------------------------------------------------------------
    def run(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard bars would bury the study's own progress line
        threads = self.cfg.threads or (1 if self.cfg.family.kind == "micro" else None)
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(self.cfg.seed)
        return getattr(self, f"cell_{cell.stage}")(cell)

    # -- pretrain ----------------------------------------------------------------------------------------------
    def cell_pretrain(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        fam = self.cfg.family
        if fam.kind == "hf":
            paths = dict(fam.models)
            params = {k: fam.params.get(k) for k in paths}
        else:
            from sparsealign.models.micro import get_recipe
            from sparsealign.models.pretrain import ensure_family

            recipe = get_recipe(fam.preset, sizes=sizes_of(self.cfg), steps=fam.pretrain_steps, seed=self.cfg.seed)
            family = ensure_family(recipe)
            paths = {m.name: m.path for m in family.members}
            params = {m.name: m.params for m in family.members}
        out = self.root / "pretrain" / "family.json"
        atomic_write_json(out, {"paths": paths, "params": params})
        return {"params": params}, {"family": out}

    # -- alignment data ----------------------------------------------------------------------------------------
    def cell_pairs(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        from sparsealign.data.preference import load_pairs, write_pairs_jsonl
        from sparsealign.data.splits import split_pairs
        from sparsealign.study.code_pairs import build_code_pairs

        a, seed = self.cfg.alignment, self.cfg.seed
        hh = load_pairs(a.preference_data, warn=cell.size == sizes_of(self.cfg)[0]).pairs
        n = len(hh)
        frac = min(0.5, max(a.heldout_pairs / n, 1 / n))
        hh_train, hh_held = split_pairs(hh, eval_fraction=frac, seed=seed)
        hh_train, hh_held = hh_train[: a.max_pairs], hh_held[: a.heldout_pairs]
        uf_sets = [s for s in self.cfg.evaluation.preference_sets if s != a.preference_data]
        uf = load_pairs(uf_sets[0], warn=False).pairs[: a.heldout_pairs] if uf_sets else []

        model_path = self.model_path(cell.size, BASE, 1.0)
        code, code_stats = build_code_pairs(model_path, self.cfg)
        code_train, code_held = split_pairs(code, eval_fraction=0.2, seed=seed) if len(code) >= 5 else (code, [])
        out = self.pairs_dir(cell.size)
        files = {
            "train": write_pairs_jsonl([*hh_train, *code_train], out / "train.jsonl"),
            "heldout_hh": write_pairs_jsonl(hh_held, out / "heldout_hh.jsonl"),
            "heldout_code": write_pairs_jsonl(code_held, out / "heldout_code.jsonl"),
        }
        if uf:
            files["heldout_uf"] = write_pairs_jsonl(uf, out / "heldout_uf.jsonl")
        metrics = {"hh_train": len(hh_train), "hh_heldout": len(hh_held), "uf_heldout": len(uf),
                   "code_train": len(code_train), "code_heldout": len(code_held), **code_stats}
        return metrics, files

    def train_pairs(self, size: str, frac: float) -> list[PreferencePair]:
        from sparsealign.data.preference import load_pairs
        from sparsealign.data.splits import nested_subsets

        pairs = load_pairs(self.pairs_dir(size) / "train.jsonl", warn=False).pairs
        fracs = sorted(set(self.cfg.alignment.subsets))
        return nested_subsets(pairs, fracs, seed=self.cfg.seed)[fracs.index(frac)]

    # -- align -------------------------------------------------------------------------------------------------
    def cell_align(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        from sparsealign.align.config import AlignConfig
        from sparsealign.align.engine import run_align
        from sparsealign.ledger import Ledger
        from sparsealign.rundir import RunDir

        a = self.cfg.alignment
        pairs = self.train_pairs(cell.size, cell.subset)
        ev = self.cfg.evaluation
        settings: dict[str, Any] = {"max_length": ev.max_length, "max_prompt_length": ev.max_prompt_length,
                                    "rationale_max_length": 2 * ev.max_length, "lr": 5e-4, "epochs": 1.0,
                                    "batch_size": 8, "logging_steps": 5, "save_steps": 10_000, **a.settings}
        if a.lora:
            settings.setdefault("lora", {})
        cfg = AlignConfig(method=cell.method, model=self.model_path(cell.size, BASE, 1.0),
                          data=str(self.pairs_dir(cell.size) / "train.jsonl"), seed=self.cfg.seed,
                          cell=f"{cell.size}/{cell.method}/{frac_tag(cell.subset)}",
                          missing_rationales="skip" if cell.method in RATIONALE_METHODS else "error", **settings)
        run = RunDir(root=self.root, ledger=Ledger(self.root / "ledger.sqlite"))
        try:
            metrics = run_align(cfg, run, pairs=pairs, eval_pairs=[])
        finally:
            run.close()
        keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
        return {**keep, "n_pairs": len(pairs)}, {"model": self.model_path(cell.size, cell.method, cell.subset)}

    # -- calibrate ---------------------------------------------------------------------------------------------
    def calibration_texts(self) -> list[str]:
        from sparsealign.data.mbpp.tasks import load_mbpp

        tasks = load_mbpp(split="train")[: self.cfg.sparsity.calibration_texts]
        return [t.code.replace("\r\n", "\n") for t in tasks]

    def cell_calibrate(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        from sparsealign.models.pretrain import load_member
        from sparsealign.sparse import (
            PredictorConfig,
            SparsityConfig,
            calibrate,
            record_activations,
            save_artifacts,
        )

        model, tok = load_member(self.model_path(cell.size, cell.method, cell.subset))
        texts = self.calibration_texts()
        base = SparsityConfig(seed=self.cfg.seed,
                              predictor=PredictorConfig(enabled="predictor" in self.cfg.sparsity.modes))
        rec = record_activations(model, tok, texts, max_length=base.max_length, max_tokens=base.max_tokens)
        metrics, files = {}, {}
        for target in self.cfg.sparsity.targets:
            cfg = base.model_copy(update={"target_sparsity": target})
            art = calibrate(model, tok, texts, cfg, recording=rec)
            out = save_artifacts(art, self.artifacts_dir(cell.size, cell.method, target))
            cal = art.calibration.get("calibration_sparsity", [])
            metrics[f"calibration_sparsity@{target:.2f}"] = sum(cal) / max(len(cal), 1)
            files[f"t{target:.2f}"] = out
        return metrics, files

    # -- evaluate ----------------------------------------------------------------------------------------------
    def cell_eval(self, cell: Cell) -> tuple[dict[str, Any], dict[str, Any]]:
        from sparsealign.study.evaluation import evaluate_cell

        return evaluate_cell(self, cell)
