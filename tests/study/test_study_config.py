"""The study config in-process: typed alignment settings (a partial AlignConfig) validated at load, defaults from
the packaged presets, a user YAML layered over its preset, and the resolved config surviving its own round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparsealign.align.config import AlignConfig
from sparsealign.config import dump_yaml
from sparsealign.errors import ConfigError
from sparsealign.study.cells import AlignCell, expand
from sparsealign.study.config import (
    PRESETS,
    AlignSettings,
    ReportConfig,
    StudyConfig,
    align_config,
    load_study_config,
    preset_path,
)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["alignment.settings.bta=1"], ["unknown field 'alignment.settings.bta'", "beta"]),
        (["alignment.settings.lr=-1"], ["alignment.settings.lr", "greater than 0"]),
        (["alignment.settings.lora.rank=8"], ["alignment.settings.lora.rank", "alpha"]),
        (["alignment.settings.max_prompt_length=400"], ["alignment.settings", "max_prompt_length (400)", "(256)"]),
        (["alignment.settings.method=orpo"], ["unknown field 'alignment.settings.method'"]),  # the study sets it
    ],
    ids=["typo", "out-of-range", "nested-typo", "cross-field", "study-owned-field"],
)
def test_bad_alignment_settings_fail_when_the_config_loads(overrides, needles):
    with pytest.raises(ConfigError) as err:
        load_study_config(None, "default", overrides)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_alignment_settings_are_a_typed_partial_of_align_config():
    fields = AlignSettings.model_fields
    assert set(fields) == set(AlignConfig.model_fields) - {"method", "model", "data", "data_split", "eval_data",
                                                           "eval_split", "max_pairs", "max_eval_pairs", "seed",
                                                           "cell", "missing_rationales"}
    assert all(f.default is None for f in fields.values())  # no defaults in code: unset means "the preset's"
    s = AlignSettings.model_validate({"lambda": 0.3, "beta": 0.2})
    assert s.lam == 0.3 and s.beta == 0.2


@pytest.mark.parametrize("preset", PRESETS)
def test_align_defaults_come_from_the_preset_yaml(preset):
    cfg = load_study_config(None, preset)
    raw = yaml.safe_load(preset_path(preset).read_text())
    full = align_config(cfg, "rdpo", model="m", data="d", cell="c")
    for key, value in raw["alignment"]["settings"].items():
        got = getattr(full, key)
        if isinstance(value, dict):  # a nested setting (lora): the fields the preset names, the rest defaults
            got = {k: v for k, v in got.model_dump().items() if k in value}
        assert got == value, key
    assert full.missing_rationales == "skip"  # human pairs have no rationale; code pairs do
    assert align_config(cfg, "dpo", model="m", data="d", cell="c").missing_rationales == "error"


def test_user_yaml_is_layered_over_the_preset_and_cells_carry_the_settings(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\nalignment: {methods: [dpo, simpo], subset_methods: [dpo], settings: {beta: 0.2}}\n")
    cfg = load_study_config(path, "default", ["alignment.settings.gamma_beta_ratio=0.25"])
    assert cfg.name == "mine" and cfg.alignment.max_pairs == 128  # the rest is the default preset's
    preset_lr = yaml.safe_load(preset_path("default").read_text())["alignment"]["settings"]["lr"]
    assert cfg.alignment.settings.lr == preset_lr and cfg.alignment.settings.beta == 0.2
    aligns = [c for c in expand(cfg) if isinstance(c, AlignCell)]
    assert {c.method for c in aligns} == {"dpo", "simpo"}
    for cell in aligns:
        assert cell.settings.beta == 0.2 and cell.settings.gamma_beta_ratio == 0.25 and cell.settings.lr == preset_lr
        assert cell.settings.max_length == cfg.evaluation.max_length  # one tokenisation for training and scoring
        assert cell.parents[0].id == f"pairs:{cell.size}"


def test_resolved_config_round_trips_and_lists_only_set_settings():
    cfg = load_study_config(None, "default", ["alignment.settings.lambda=0.3"])
    dumped = yaml.safe_load(dump_yaml(cfg))
    assert dumped["alignment"]["settings"]["lambda"] == 0.3 and "beta" not in dumped["alignment"]["settings"]
    # the report settings are not part of the saved identity (they travel in config/report.json beside it)
    assert "report" not in dumped and cfg.report != ReportConfig()
    assert StudyConfig.model_validate(dumped) == cfg.model_copy(update={"report": ReportConfig()})


@pytest.mark.parametrize(
    ("override", "needle"),
    [("evaluation.mbpp_base_full_targets=[0.4]", "[0.4] are not in sparsity.targets [0.3, 0.5]"),
     ("evaluation.sparse_mbpp_targets=[0.4]", "sparse_mbpp_targets [0.4] are not in sparsity.targets"),
     ("evaluation.mbpp_base_tasks=null", "mbpp_base_full_targets needs mbpp_base_tasks")],
    ids=["target-not-run", "sparse-target-not-run", "no-base-tasks"],
)
def test_base_full_targets_must_name_targets_the_study_runs(override, needle):
    with pytest.raises(ConfigError) as err:
        load_study_config(None, "real", [override])
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
