"""Where a study's cells read and write, under runs/<name>/ (see docs/architecture.md):

    pretrain/family.json                                  paths and sizes of the base models
    pairs/<size>/{train,heldout_hh,heldout_uf,heldout_code}.jsonl
    align/<size>/<method>/<frac>[/s<r>]/model/                  + sparsealign_alignment.json (method, β, γ, reference)
    sparse/<size>/<method>/t<target>/                     thresholds, predictors
    eval/<size>/<method>/<frac>/<mode>/<s>/               metrics.json, items.json, trace.json, mbpp.parquet
    config/study.yaml, config/report.json                 the run's identity; its report settings (not identity)
    ledger.sqlite, results.parquet, report.{md,html}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sparsealign.study.cells import AlignCell, Cell, Model, frac_tag, seed_tag
from sparsealign.study.config import StudyConfig

REPORT_SETTINGS = "config/report.json"  # rewritten by every run; `study report --name` reads it back

@dataclass
class Study:
    cfg: StudyConfig
    root: Path

    def pairs_dir(self, size: str) -> Path:
        return self.root / "pairs" / size

    def base_model_path(self, size: str) -> str:
        return json.loads((self.root / "pretrain" / "family.json").read_text())["paths"][size]

    def model_path(self, size: str, model: Model) -> str:
        """The model of `size` that `model` names (the pretrain cell stands for every base model)."""
        if isinstance(model, AlignCell):
            return str(self.root / "align" / model.size / model.method / f"{frac_tag(model.subset)}{seed_tag(model.seed)}"
                       / "model")
        return self.base_model_path(size)

    def artifacts_root(self, size: str, method: str, seed: int = 0) -> Path:
        return self.root / "sparse" / size / f"{method}{seed_tag(seed)}"

    def eval_dir(self, cell: Cell) -> Path:
        return self.root / "eval" / cell.key
