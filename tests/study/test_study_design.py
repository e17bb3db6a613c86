"""The study's design pieces (issue 9): alignment seeds in the cell graph and in training, held-out code pairs that are
the same for every size, the sparse grid sized by `sparsity.methods`, the default preset's targets above every
model's natural sparsity."""

from __future__ import annotations

import fcntl
import json
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsealign.align.engine import run_align
from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.data.records import PreferencePair
from sparsealign.ledger import Ledger
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer
from sparsealign.report.items import parse_cell_key
from sparsealign.rundir import RunDir
from sparsealign.study.cells import AlignCell, EvalCell, PairsCell, expand
from sparsealign.study.config import StudyConfig, cell_align_config, load_study_config
from sparsealign.study.layout import Study
from sparsealign.study.pipeline import heldout_code_pairs, pairs_cell

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**alignment) -> StudyConfig:
    return StudyConfig.model_validate({
        "family": {"sizes": ["micro-xxs", "micro-xs"]},
        "alignment": {"methods": ["dpo", "rdpo"], "subset_methods": ["dpo"], "subsets": [0.5, 1.0], **alignment},
        "sparsity": {"targets": [0.9], "modes": ["static", "dynamic"], "methods": ["dpo"]},
    })


def test_seeds_are_cells_with_their_own_keys_and_the_report_reads_them_back():
    cells = expand(_cfg(seeds=3))
    aligned = [c for c in cells if isinstance(c, AlignCell) and c.size == "micro-xxs"]
    # dpo: 2 subsets x 3 seeds, rdpo: 1 x 3
    assert sorted(c.key for c in aligned) == sorted(
        [f"micro-xxs/dpo/f{f}{s}" for f in ("0.500", "1.000") for s in ("", "/s1", "/s2")]
        + [f"micro-xxs/rdpo/f1.000{s}" for s in ("", "/s1", "/s2")])
    evals = [c for c in cells if isinstance(c, EvalCell) and c.size == "micro-xxs"]
    assert len({c.key for c in evals}) == len(evals)
    seeds = {parse_cell_key(c.key)["seed"] for c in evals if c.method == "dpo"}
    assert seeds == {0, 1, 2}
    # sparse cells only for the base model and sparsity.methods; subset models stay dense
    sparse = {(c.method, c.subset) for c in evals if c.mode != "dense"}
    assert sparse == {("base", 1.0), ("dpo", 1.0)}
    assert sum(c.mode != "dense" for c in evals) == 2 * (1 + 3)
    one_seed = {c.key for c in expand(_cfg())}  # one seed: the keys are the ones a one-seed study always had
    assert "eval:micro-xxs/dpo/f1.000/dense/0.00" in {f"eval:{k}" for k in one_seed}


def test_sparse_methods_must_be_aligned_methods():
    with pytest.raises(ValueError, match="sparsity.methods"):
        StudyConfig.model_validate({"alignment": {"methods": ["dpo"], "subset_methods": ["dpo"]},
                                    "sparsity": {"methods": ["orpo"]}})


def test_alignment_seeds_change_the_data_order(tmp_path, data_dir):
    """Same model, same pairs, same hyper-parameters: seed 0 twice gives the same weights, seed 1 other weights
    (nothing else is random in training: no dropout), so the seed reaches the order the pairs are visited in."""
    pairs = load_pairs("hh-rlhf/helpful-base/test.jsonl.gz", warn=False).pairs[:16]
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen for p in pairs], vocab_size=300, hidden_size=16,
                                          num_layers=1, num_heads=2, intermediate_size=32, hidden_act="relu")
    base = save_pretrained(model, tok, tmp_path / "base")
    settings = {"lr": 1e-2, "batch_size": 4, "epochs": 1.0, "max_length": 64, "max_prompt_length": 32,
                "logging_steps": 1, "save_steps": 10_000}
    weights = []
    for i, seed in enumerate((0, 1, 0)):
        cfg = cell_align_config("dpo", settings, model=str(base), data="-", seed=seed, cell=f"run{i}")
        run = RunDir(root=tmp_path, ledger=Ledger(tmp_path / "ledger.sqlite"))
        try:
            run_align(cfg, run, pairs=pairs, eval_pairs=[])
        finally:
            run.close()
        weights.append(load_file(tmp_path / "align" / f"run{i}" / "model" / "model.safetensors"))
    same = all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    other = any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert same and other


def test_heldout_code_pairs_are_identical_for_every_size(tmp_path, data_dir):
    cfg = load_study_config(None, "default", ["family.sizes=[micro-xxs,micro-xs]", "alignment.code_pair_tasks=4",
                                              "alignment.code_pair_samples=2", "evaluation.max_new_tokens=8"])
    model, tok = tiny_model_and_tokenizer(["def f(x):\n    return x\n" * 20], vocab_size=300, hidden_size=16,
                                          num_layers=1, num_heads=2, intermediate_size=32, hidden_act="relu")
    other, _ = tiny_model_and_tokenizer(["def f(x):\n    return x\n" * 20], vocab_size=300, hidden_size=16,
                                        num_layers=1, num_heads=2, intermediate_size=32, hidden_act="relu", seed=1)
    paths = {"micro-xxs": str(save_pretrained(model, tok, tmp_path / "a")),
             "micro-xs": str(save_pretrained(other, tok, tmp_path / "b"))}
    (tmp_path / "run" / "pretrain").mkdir(parents=True)
    (tmp_path / "run" / "pretrain" / "family.json").write_text(json.dumps({"paths": paths, "params": {}}))
    study = Study(cfg, tmp_path / "run")
    metrics = {size: pairs_cell(study, PairsCell(size))[0] for size in paths}
    held = {size: Path(study.pairs_dir(size) / "heldout_code.jsonl").read_text() for size in paths}
    assert held["micro-xxs"] == held["micro-xs"]
    assert metrics["micro-xxs"]["code_heldout"] == metrics["micro-xs"]["code_heldout"] >= 500
    train = [json.loads(line)["id"] for line in (study.pairs_dir("micro-xxs") / "train.jsonl").open()]
    held_ids = {json.loads(line)["id"] for line in held["micro-xs"].splitlines()}
    assert not held_ids & set(train)  # held-out tasks are MBPP test / generated test, never training tasks


def test_heldout_code_pairs_are_built_once_while_another_cell_builds(tmp_path, data_dir):
    """Two sizes' pairs cells run at once: the second waits for the first builder's lock and reads its pairs
    instead of building its own (a busy machine's sandbox timeouts once gave one size 600 pairs, the others 599)."""
    study = Study(load_study_config(None, "default"), tmp_path / "run")
    path = study.root / "pairs" / "heldout_code_mutants.jsonl"
    path.parent.mkdir(parents=True)
    first = PreferencePair(id="code:mbpp:11", prompt="p", chosen="a", rejected="b")
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another cell is building"
        result: list = []
        waiter = threading.Thread(target=lambda: result.append(heldout_code_pairs(study)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not result  # blocked on the lock, not building
        write_pairs_jsonl([first], path)
        path.with_suffix(".json").write_text(json.dumps({"pairs": 1}))
    waiter.join(timeout=60)
    pairs, stats = result[0]
    assert [p.id for p in pairs] == ["code:mbpp:11"] and stats == {"pairs": 1}


def test_default_targets_lie_above_every_models_natural_sparsity():
    """Natural sparsity measured on the 500 MBPP test prompts + references (docs/design.md, docs/natural_sparsity.json): 0.50-0.71."""
    cfg = load_study_config(None, "default")
    measured = json.loads((Path(__file__).parents[2] / "docs" / "natural_sparsity.json").read_text())
    assert set(measured) >= {"micro-xxs", "micro-xs", "micro-s", "micro-m"}
    assert min(cfg.sparsity.targets) > max(v["estimate"] for v in measured.values())
    assert cfg.alignment.seeds >= 3 and cfg.evaluation.generated_tasks >= 200


def test_a_dense_cell_without_the_likelihood_pass_reports_no_realized_sparsity():
    """Annotation-subset dense cells skip the MBPP reference pass that measures natural sparsity: no row, not 0."""
    from sparsealign.study.evaluation import EvalContext, sparsity_step

    skipped = EvalContext(study=None, cell=None, model=None, tok=None, scoring=None)
    sparsity_step(skipped)
    assert "realized_sparsity" not in skipped.metrics
    measured = EvalContext(study=None, cell=None, model=None, tok=None, scoring=None,
                           metrics={"mbpp_natural_sparsity": 0.61})
    sparsity_step(measured)
    assert measured.metrics["realized_sparsity"] == 0.61
