"""What each study cell does: a thin caller of its stage's runner, reading and writing the run directory
(`study.layout`).  `RUNNERS` is the explicit {stage: runner} table the executors dispatch through.

    pretrain  -> models.pretrain.ensure_family (as `sparsealign pretrain`)
    pairs     -> data.preference + study.code_pairs
    align     -> align.engine.run_align (as `sparsealign align`)
    calibrate -> sparse.calibration.run.run_calibrate (as `sparsealign sparsify calibrate`)
    eval      -> study.evaluation.run_eval_cell -> evaluate.{mbpp,preference}.run (as `sparsealign eval ...`)

Every cell is deterministic given the study seed (speed figures aside), so a killed and resumed study ends with the
same metrics as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from sparsealign.align.engine import run_align
from sparsealign.align.rationales import fill_rationales, hf_generator
from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.mutants import mutant_pairs
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.data.records import PreferencePair
from sparsealign.data.splits import nested_subsets, split_pairs
from sparsealign.evaluate.preference.metrics import length_metrics
from sparsealign.io import atomic_write_json, exclusive
from sparsealign.ledger import Ledger
from sparsealign.models.loading import load_model
from sparsealign.models.micro import get_recipe
from sparsealign.models.pretrain import ensure_family
from sparsealign.rundir import RunDir
from sparsealign.sandbox.pool import SandboxPool
from sparsealign.sparse.artifacts import target_dir
from sparsealign.sparse.calibration.run import CalibrateRunConfig, run_calibrate
from sparsealign.sparse.config import PredictorConfig, SparsityConfig
from sparsealign.study.cells import (
    AlignCell,
    CalibrateCell,
    Cell,
    EvalCell,
    PairsCell,
    PretrainCell,
    model_seed,
    sizes_of,
)
from sparsealign.study.code_pairs import build_code_pairs
from sparsealign.study.config import DIALOGUE_SETS, StudyConfig, cell_align_config
from sparsealign.study.evaluation import response_tokens, run_eval_cell
from sparsealign.study.layout import Study

__all__ = ["RUNNERS", "Study", "run_cell"]
log = logging.getLogger("sparsealign.study")
GENERATED_LEAK_FREE = 200  # generated test tasks whose asserts never occur in the pretraining split
CellResult = tuple[dict[str, Any], dict[str, Any]]  # (metrics, artifacts) as the ledger records them


def pretrain_cell(study: Study, cell: PretrainCell) -> CellResult:
    cfg, fam = study.cfg, cell.family
    if fam.kind != "micro":
        paths = dict(fam.models)
        params = {k: fam.params.get(k) for k in paths}
    else:
        recipe = get_recipe(fam.preset, sizes=list(cell.sizes), steps=fam.pretrain_steps, seed=cfg.seed)
        family = ensure_family(recipe)
        paths = {m.name: m.path for m in family.members}
        params = {m.name: m.params for m in family.members}
    out = study.root / "pretrain" / "family.json"
    atomic_write_json(out, {"paths": paths, "params": params, "family": fam.name, "kind": fam.kind})
    return {"params": params, "family": fam.name}, {"family": out}


def pairs_cell(study: Study, cell: PairsCell) -> CellResult:
    cfg = study.cfg
    a, ev, seed = cfg.alignment, cfg.evaluation, cfg.seed
    hh = load_pairs(a.preference_data, warn=cell.size == sizes_of(cfg)[0]).pairs
    n = len(hh)
    frac = min(0.5, max(a.heldout_pairs / n, 1 / n))
    hh_train, hh_held = split_pairs(hh, eval_fraction=frac, seed=seed)
    hh_train, hh_held = hh_train[: a.max_pairs], hh_held[: a.heldout_pairs]
    uf_sets = [s for s in ev.preference_sets if s != a.preference_data]
    uf = load_pairs(uf_sets[0], warn=False).pairs[: ev.uf_pairs] if uf_sets else []
    dialogue: dict[str, Any] = {}
    if not cfg.family.reads_english:  # a code-only family: align on code, keep only the dialogue sets' baselines
        tok = load_model(study.base_model_path(cell.size), cfg.load)[1]
        dialogue = {k: v for name, pairs in zip(DIALOGUE_SETS, (hh_held, uf), strict=True)
                    for k, v in dialogue_length_baselines(tok, name, pairs).items()}
        hh_train, hh_held, uf = [], [], []

    rationale_stats = self_rationales(study.base_model_path(cell.size), hh_train, cfg) \
        if a.hh_rationales == "self" else {}
    code, code_stats = build_code_pairs(study.base_model_path(cell.size), cfg)
    if ev.heldout_code == "mutants":  # the same held-out items for every size; all sampled pairs train
        code_train, (code_held, mutant_stats) = code, heldout_code_pairs(study)
        code_stats.update(mutant_stats)
    else:
        code_train, code_held = split_pairs(code, eval_fraction=0.2, seed=seed) if len(code) >= 5 else (code, [])
    out = study.pairs_dir(cell.size)
    files = {
        "train": write_pairs_jsonl([*hh_train, *code_train], out / "train.jsonl"),
        "heldout_hh": write_pairs_jsonl(hh_held, out / "heldout_hh.jsonl"),
        "heldout_code": write_pairs_jsonl(code_held, out / "heldout_code.jsonl"),
    }
    if uf:
        files["heldout_uf"] = write_pairs_jsonl(uf, out / "heldout_uf.jsonl")
    metrics = {"hh_train": len(hh_train), "hh_heldout": len(hh_held), "uf_heldout": len(uf),
               "code_train": len(code_train), "code_heldout": len(code_held), **code_stats, **rationale_stats,
               **dialogue}
    return metrics, files


def dialogue_length_baselines(tok, name: str, pairs: list[PreferencePair]) -> dict[str, float]:
    """`<name>_length_baseline_accuracy` (+ CI): how often "the longer response wins" (token counts) agrees with the
    labels -- all a model that never saw English can get from a dialogue set (the report says so)."""
    if not pairs:
        return {}
    n_w, n_l = response_tokens(tok, pairs)
    m = length_metrics(np.zeros(len(pairs)), n_w, n_l)["length_baseline_accuracy"]
    key = f"{name}_length_baseline_accuracy"
    return {key: m["estimate"], f"{key}_ci_low": m["low"], f"{key}_ci_high": m["high"], f"{name}_pairs": len(pairs)}


MUTANT_TIMEOUT_S = 10.0  # generous: a reference that times out on a busy machine would drop its task


def heldout_code_pairs(study: Study) -> tuple[list[PreferencePair], dict[str, int]]:
    """Reference vs failing one-edit mutant for the MBPP test tasks and the leak-free generated test tasks: no model
    involved, so every size gets the same pairs.  Built once per study (`pairs/heldout_code_mutants.jsonl`)."""
    path = study.root / "pairs" / "heldout_code_mutants.jsonl"
    stats_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time: two sizes' pairs cells run at once, and whether a slow reference passes its tests
    # within the timeout can differ between two builds on a busy machine (task 123: 600 vs 599 pairs), so the
    # second cell must wait and read the first one's pairs, never build its own
    with exclusive(path.with_suffix(".lock")):
        if path.exists() and stats_path.exists():
            return load_pairs(path, warn=False).pairs, json.loads(stats_path.read_text())
        ev = study.cfg.evaluation
        tasks = load_mbpp(split=ev.mbpp_split) + generated_split("test", GENERATED_LEAK_FREE)
        with SandboxPool(workers=ev.sandbox_workers, timeout_s=MUTANT_TIMEOUT_S, memory_mb=512) as pool:
            pairs, stats = mutant_pairs(tasks, pool, seed=study.cfg.seed)
        write_pairs_jsonl(pairs, path)
        atomic_write_json(stats_path, stats)
    return pairs, stats


def self_rationales(model_path: str, pairs: list[PreferencePair], cfg: StudyConfig) -> dict[str, int]:
    """Rationales for HH training pairs written by the base model itself, as `rationales generate --source hf`
    does (its generator, greedy; fills `pair.rationale` in place)."""
    model, tok = load_model(model_path, cfg.load)
    generator = hf_generator(model, tok, batch_size=16, max_new_tokens=cfg.alignment.rationale_max_new_tokens,
                             temperature=0.0, seed=cfg.seed)
    counts = fill_rationales(pairs, generator, source=f"hf:{model_path}", save=lambda _: None)
    return {f"hh_rationales_{k}": v for k, v in counts.items()}


def train_pairs(study: Study, cell: AlignCell) -> list[PreferencePair]:
    pairs = load_pairs(study.pairs_dir(cell.size) / "train.jsonl", warn=False).pairs
    fracs = sorted(set(study.cfg.alignment.subsets))
    return nested_subsets(pairs, fracs, seed=study.cfg.seed)[fracs.index(cell.subset)]


def align_cell(study: Study, cell: AlignCell) -> CellResult:
    pairs = train_pairs(study, cell)
    settings = cell.settings.model_dump(exclude_none=True, by_alias=True) if cell.settings is not None else {}
    cfg = cell_align_config(cell.method, settings, model=study.base_model_path(cell.size),
                            data=str(study.pairs_dir(cell.size) / "train.jsonl"), seed=study.cfg.seed + cell.seed,
                            cell=cell.key)
    run = RunDir(root=study.root, ledger=Ledger(study.root / "ledger.sqlite"))
    try:
        metrics = run_align(cfg, run, pairs=pairs, eval_pairs=[])
    finally:
        run.close()
    keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    return {**keep, "n_pairs": len(pairs)}, {"model": study.model_path(cell.size, cell)}


def calibration_texts(study: Study) -> list[str]:
    tasks = load_mbpp(split="train")[: study.cfg.sparsity.calibration_texts]
    return [t.code.replace("\r\n", "\n") for t in tasks]


def calibrate_cell(study: Study, cell: CalibrateCell) -> CellResult:
    model_path = study.model_path(cell.size, cell.model)
    cfg = CalibrateRunConfig(model=model_path, targets=list(cell.targets), profile=False, load=study.cfg.load,
                             sparsity=SparsityConfig(seed=study.cfg.seed, controller=cell.controller,
                                                     predictor=PredictorConfig(enabled=cell.predictor)))
    out = study.artifacts_root(cell.size, cell.method, model_seed(cell.model))
    arts = run_calibrate(cfg, out, texts=calibration_texts(study))
    metrics: dict[str, Any] = {}
    files: dict[str, Any] = {}
    for target, art in arts.items():
        cal = art.calibration.get("calibration_sparsity", [])
        metrics[f"calibration_sparsity@{target:.2f}"] = sum(cal) / max(len(cal), 1)
        files[target_dir(out, target).name] = target_dir(out, target)
    return metrics, files


RUNNERS: dict[str, Callable[[Study, Any], CellResult]] = {
    PretrainCell.stage: pretrain_cell,
    PairsCell.stage: pairs_cell,
    AlignCell.stage: align_cell,
    CalibrateCell.stage: calibrate_cell,
    EvalCell.stage: run_eval_cell,
}


def run_cell(study: Study, cell: Cell) -> CellResult:
    """The executors' entry: per-cell torch settings, then the cell's runner."""
    hf_logging.disable_progress_bar()  # per-shard bars would bury the study's own progress line
    threads = study.cfg.threads or (1 if study.cfg.family.kind == "micro" else None)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(study.cfg.seed)
    if not torch.cuda.is_available():
        return RUNNERS[cell.stage](study, cell)
    torch.cuda.reset_peak_memory_stats()
    metrics, files = RUNNERS[cell.stage](study, cell)  # on a GPU: the cell's peak, beside `study plan`'s estimate
    return {**metrics, "peak_gpu_gib": torch.cuda.max_memory_allocated() / 1024**3}, files
