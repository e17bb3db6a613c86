"""The sparsity modes are declared once (`sparse.modes.MODE_FACTS`): the CLI choices, the typed configs, the study's
grid and the runtime accept exactly the table's modes, and no other module spells a mode's name."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import typing
from pathlib import Path

import click
import pytest
import torch
from tests.conftest import assert_one_line_error

from sparsealign.errors import ConfigError, UserError
from sparsealign.models.tiny import build_llama, train_tokenizer
from sparsealign.sparse.bench.cli import parse_modes
from sparsealign.sparse.calibration.calibrate import calibrate
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.metrics import ffn_flops
from sparsealign.sparse.modes import (
    DYNAMIC,
    MODE_FACTS,
    MODES,
    STATIC,
    Mode,
    facts,
    needs_predictors,
    usable_modes,
)
from sparsealign.sparse.options import sparsity_options
from sparsealign.sparse.runtime.patch import apply_sparsity
from sparsealign.sparse.spec import SparsitySpec
from sparsealign.study.cells import CalibrateCell, expand
from sparsealign.study.config import ContrastConfig, SparsityGrid, load_study_config

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "sparsealign"


def test_the_table_names_the_roles_and_the_literal():
    assert set(typing.get_args(Mode)) == set(MODES) == set(MODE_FACTS)
    assert facts(DYNAMIC).controller and facts(DYNAMIC).baseline == STATIC
    assert not facts(STATIC).controller and not facts(STATIC).predictor
    assert usable_modes(True) == list(MODES)
    assert usable_modes(False) == [m for m in MODES if not facts(m).predictor]
    assert needs_predictors(MODES) and not needs_predictors([STATIC, DYNAMIC])
    with pytest.raises(UserError, match="unknown sparsity mode 'nope'; expected one of " + ", ".join(MODES)):
        facts("nope")


def test_cli_choices_are_the_table(cli):
    @click.command()
    @sparsity_options()
    def cmd(**_kw):  # pragma: no cover - only its parameters are read
        pass

    option = next(p for p in cmd.params if p.name == "mode")
    assert option.metavar == f"[{'|'.join(MODES)}]" and option.default == DYNAMIC
    for mode in MODES:
        assert option.process_value(click.Context(cmd), mode) == mode
    assert parse_modes(",".join(MODES)) == list(MODES)
    with pytest.raises(UserError, match=", ".join(MODES)):
        parse_modes(f"{STATIC},nope")
    # the verbs: an unknown --mode is one line naming the flag and every declared mode
    for args in (["sparsify", "evaluate", "--model", "m"], ["sparsify", "generate", "--model", "m", "--prompt", "x"],
                 ["eval", "mbpp", "--model", "m"]):
        assert_one_line_error(cli(*args, "--mode", "nope"), "--mode", "unknown sparsity mode 'nope'", ", ".join(MODES))
    assert_one_line_error(cli("sparsify", "bench", "--preset", "tiny-relu", "--modes", "nope"), "--modes",
                          ", ".join(MODES))


def test_configs_accept_exactly_the_table():
    for mode in MODES:
        assert SparsitySpec(artifacts="a", mode=mode).mode == mode
        assert ContrastConfig(question="thresholds", dataset="hh", mode=mode).mode == mode
    assert SparsityGrid(modes=list(MODES)).modes == list(MODES)
    with pytest.raises(ValueError):
        SparsitySpec(artifacts="a", mode="nope")
    with pytest.raises(ConfigError) as err:
        load_study_config(None, overrides=["sparsity.modes=[nope]"])
    assert "sparsity.modes" in str(err.value) and all(repr(m) in str(err.value) for m in MODES)


def test_study_grid_reads_the_facts():
    """The calibrate cell trains predictors exactly when a mode of the grid needs them; one eval cell per mode."""
    for modes in ([STATIC, DYNAMIC], list(MODES)):
        cfg = load_study_config(None, overrides=[f"sparsity.modes=[{', '.join(modes)}]"])
        cells = expand(cfg)
        cal = [c for c in cells if isinstance(c, CalibrateCell)]
        assert cal and all(c.predictor == needs_predictors(modes) for c in cal)
        assert {c.mode for c in cells if c.stage == "eval" and c.calibrate is not None} == set(modes)


@pytest.fixture(scope="module")
def tiny(data_dir):
    code = [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]
    tok = train_tokenizer(code[:100], vocab_size=320)
    model = build_llama(len(tok), hidden_size=32, num_layers=2, intermediate_size=96, hidden_act="relu", seed=0,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg = SparsityConfig(target_sparsity=0.5, predictor={"enabled": True, "rank": 8, "epochs": 2})
    return model, tok, calibrate(model, tok, code[100:116], cfg)


def test_runtime_accepts_exactly_the_table(tiny):
    model, tok, art = tiny
    ids = tok("def add(a, b):\n    return a + b", return_tensors="pt")["input_ids"]
    for mode in MODES:
        with apply_sparsity(model, art, mode) as handle, torch.no_grad():
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
            stats = handle.stats()
        assert stats["mode"] == mode and (handle.controller is not None) == facts(mode).controller
        assert 0 < stats["realized_sparsity"] < 1 and "flops_skipped" in stats
    with pytest.raises(UserError, match="unknown sparsity mode 'nope'; expected one of " + ", ".join(MODES)):
        apply_sparsity(model, art, "nope")
    art_without = dataclasses.replace(art, predictors=None, cutoffs=None)
    for mode in MODES:
        if facts(mode).predictor:
            with pytest.raises(UserError, match="no predictors"):
                apply_sparsity(model, art_without, mode)


def test_flops_follow_the_facts():
    for mode in MODES:
        f = ffn_flops(64, 256, 64, mode, predictor_rank=8)
        gate_dense = 2 * 64 * 256
        assert (f["sparse"] < gate_dense) == facts(mode).predictor  # only a predictor skips gate rows


def test_no_module_spells_a_mode_name():
    """The done-criterion of issue 22: outside the table, src/ never writes a mode's name as a string literal."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "sparse" / "modes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.strip() in MODES:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_the_architecture_doc_shows_adding_a_method_and_a_mode():
    """docs/architecture.md's worked examples name the files a new method (<= 2) and a new mode (<= 3) touch."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for heading, most in (("### Adding an alignment method", 2), ("### Adding a sparsity mode", 3)):
        assert heading in text
        section = re.split(r"\n##+ ", text.split(heading, 1)[1], maxsplit=1)[0]
        files = set(re.findall(r"`(src/sparsealign/[\w/<>.-]+)`", section))
        assert 0 < len(files) <= most, (heading, files)
        assert all((ROOT / f).exists() for f in files if "<" not in f), files
