"""CLI conventions (issue 11): every printed launch line is accepted, HF/TRL names in --set, "did you mean",
errors that name the flag to add, verbs listed in pipeline order, the same flag names across verbs."""

from __future__ import annotations

import json
import shlex

import click
import pytest

from conftest import assert_one_line_error
from sparsealign.cli import PIPELINE_ORDER
from sparsealign.cli import cli as root
from sparsealign.config import load_config

HH = "hh-rlhf/helpful-base/test.jsonl.gz"


@pytest.mark.parametrize("preset", ["default", "small", "paper"])
def test_every_launch_line_of_study_plan_is_accepted(cli, preset) -> None:
    res = cli("study", "plan", "--preset", preset, "--json")
    assert res.returncode == 0, res.stderr
    lines = res.json()["launch"]
    assert lines
    for line in lines:
        words = shlex.split(line.split("#")[0])
        if words[:2] == ["ray", "start"]:
            continue  # Ray's own command
        if words[0] == "accelerate":  # `accelerate launch ... -m sparsealign.cli VERB ...`: our part is after -m
            words = ["sparsealign", *words[words.index("sparsealign.cli") + 1:]]
        assert words[0] == "sparsealign", line
        args = [{"<hub id>": "org/model", "<pairs>": HH}.get(w, w) for w in words[1:]]
        # --dry-run belongs to the verb (study's group, or align): put it right after the verb's own options
        checked = cli(*args, "--dry-run", env={"HF_HUB_OFFLINE": "1"})
        assert checked.returncode == 0, f"{line}\n{checked.stderr}"
        assert "config valid" in checked.stdout, checked.stdout


def test_hf_and_trl_names_in_set_map_to_our_fields() -> None:
    from sparsealign.align.config import AlignConfig
    from sparsealign.study.config import StudyConfig

    cfg = load_config(AlignConfig, None, ["learning_rate=2e-5", "per_device_train_batch_size=2",
                                          "gradient_accumulation_steps=4", "num_train_epochs=3", "beta=0.2",
                                          "lora_r=8"], base={"model": "m", "data": "d"})
    assert (cfg.lr, cfg.batch_size, cfg.grad_accum, cfg.epochs, cfg.beta, cfg.lora.r) == (2e-5, 2, 4, 3, 0.2, 8)
    assert load_config(AlignConfig, None, ["lora=true"], base={"model": "m", "data": "d"}).lora.r == 16
    assert load_config(AlignConfig, None, ["lora=false"], base={"model": "m", "data": "d"}).lora is None
    study = load_config(StudyConfig, None, ["beta=0.3", "learning_rate=1e-4", "lora_r=4"])
    settings = study.alignment.settings
    assert (settings.beta, settings.lr, settings.lora.r) == (0.3, 1e-4, 4)
    # one alias table: every HF/TRL name AlignConfig takes reaches the study's alignment.settings too
    settings = load_config(StudyConfig, None, ["lora_alpha=8", "warmup_ratio=0.1"]).alignment.settings
    assert (settings.lora.alpha, settings.warmup) == (8, 0.1)


def test_unknown_set_keys_suggest_instead_of_listing(cli) -> None:
    res = cli("align", "--model", "m", "--data", HH, "--set", "learnin_rate=1e-5")
    assert_one_line_error(res, "unknown field 'learnin_rate'", "did you mean 'lr (alias learning_rate)'")
    assert "max_grad_norm" not in res.stderr  # no dump of every field
    assert_one_line_error(cli("study", "--set", "alignment.loar=true", "--dry-run"), "did you mean 'lora'")
    assert_one_line_error(cli("align"), "missing --model, --data")


def test_top_level_help_lists_verbs_in_pipeline_order(cli) -> None:
    res = cli("--help")
    listed = [line.split()[0] for line in res.stdout.split("Commands:")[1].splitlines() if line.startswith("  ")]
    assert listed == PIPELINE_ORDER


def _options(command: click.Command) -> set[str]:
    return {opt for p in command.params if isinstance(p, click.Option) for opt in p.opts}


def test_same_flag_names_across_verbs() -> None:
    sparsify, ev = root.commands["sparsify"], root.commands["eval"]
    for verb in ("profile", "calibrate", "evaluate", "generate"):
        assert "--model" in _options(sparsify.commands[verb]), verb
    for verb in ("evaluate", "generate"):
        assert {"--sparsity", "--mode", "--prefill"} <= _options(sparsify.commands[verb]), verb
    runs_a_model = [ev.commands["mbpp"], ev.commands["preference"], root.commands["rationales"].commands["generate"]]
    for command in runs_a_model:
        assert {"--model", "--sparsity", "--mode", "--prefill", "--out"} <= _options(command), command.name
    for command in (ev.commands["mbpp"], ev.commands["winrate"], root.commands["rationales"].commands["generate"],
                    sparsify.commands["generate"]):
        assert "--max-new-tokens" in _options(command), command.name


def test_positional_model_still_works_but_not_two(cli, tmp_path) -> None:
    res = cli("sparsify", "calibrate", "a-model", "--model", "b-model")
    assert_one_line_error(res, "two models given", "--model")
    res = cli("align", "--model", "m", "--data", HH, "--set", "lora_r=8", "--dry-run", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["config"]["lora"]["r"] == 8


def test_errors_name_the_flag_to_add(cli) -> None:
    assert_one_line_error(cli("eval", "mbpp", "--model", "m", "--compare-dense"), "--compare-dense", "--sparsity")
    assert_one_line_error(cli("eval", "report", "--name", "nope"), "no evaluations", "eval mbpp")
    assert_one_line_error(cli("eval", "winrate", "--judge", "llm", "--model", "j", "--sparsity", "s"),
                          "--responses-model", "--pairs")
