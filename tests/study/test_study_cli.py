"""`sparsealign study` without running a grid: `study plan` for the shipped presets, config errors, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import assert_one_line_error
from sparsealign.models.micro import get_recipe
from sparsealign.study.config import preset_path

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
MICRO_SIZES = len(get_recipe("micro").sizes)  # the default study uses every size of the `micro` preset


def expected_by_stage(cfg: dict, n_sizes: int) -> dict[str, int]:
    """Cell counts written out from the YAML, independently of `cells.expand`: every aligned model once per seed,
    sparse cells for the base model and `sparsity.methods` (default: every method) on all pairs."""
    a, sp = cfg["alignment"], cfg["sparsity"]
    seeds = a.get("seeds", 1)
    subsets = set(a["subsets"]) | {1.0}
    aligned = seeds * sum(len(subsets) if m in a["subset_methods"] else 1 for m in a["methods"])
    sparse_methods = sp.get("methods") or a["methods"]
    full_models = 1 + seeds * len(sparse_methods)  # base + one all-pairs model per sparse method and seed
    return {
        "pretrain": 1,
        "pairs": n_sizes,
        "align": n_sizes * aligned,
        "calibrate": n_sizes * full_models,
        "eval": n_sizes * (1 + aligned + full_models * len(sp["modes"]) * len(sp["targets"])),
    }


@pytest.mark.parametrize("preset", ["default", "paper"])
def test_plan_counts_memory_and_launch(cli, tmp_path: Path, preset: str):
    res = cli("study", "--preset", preset, "plan", "--json", env=OFFLINE)
    assert res.returncode == 0, res.stderr
    plan = res.json()
    cfg = yaml.safe_load(preset_path(preset).read_text())
    n_sizes = len(cfg["family"]["models"]) if preset == "paper" else MICRO_SIZES
    assert len(plan["sizes"]) == n_sizes
    assert plan["by_stage"] == expected_by_stage(cfg, n_sizes)
    assert plan["count"] == len(plan["cells"]) == sum(plan["by_stage"].values())
    ids = [row["cell"] for row in plan["cells"]]
    assert len(set(ids)) == len(ids)
    position = {cell: i for i, cell in enumerate(ids)}
    for row in plan["cells"]:
        assert all(position[d] < position[row["cell"]] for d in row["deps"]), row  # dependencies come first
        if row["stage"] != "pretrain":
            assert row["params"] > 0 and row["memory_gib"] > 0, row
    assert f"sparsealign study --preset {preset}" in plan["launch"]
    if preset == "paper":  # the cluster preset: Ray launch lines, and a 70B full fine-tune would not fit one node
        assert any(cmd.startswith("ray start") for cmd in plan["launch"])
        mem = {row["cell"]: row["memory_gib"] for row in plan["cells"]}
        assert mem["align:70b/dpo/f1.000"] > mem["align:7b/dpo/f1.000"] > mem["eval:7b/base/f1.000/dense/0.00"]
    assert not (tmp_path / "runs").exists()

    text = cli("study", "--preset", preset, "plan", env=OFFLINE)
    assert text.returncode == 0 and "launch:" in text.stdout and "iB" in text.stdout


def test_plan_takes_a_config_path_and_imports_nothing_heavy(tmp_path: Path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: mine\nfamily: {sizes: [micro-xs]}\nalignment: {methods: [dpo], subset_methods: [dpo]}\n")
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from sparsealign.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['study', 'plan', {str(cfg)!r}, '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'ray', 'pandas') if m in sys.modules]\n"
        "print(json.dumps({'plan': json.loads(r.output), 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    assert out["plan"]["name"] == "mine" and out["plan"]["sizes"] == ["micro-xs"]
    assert f"sparsealign study --config {cfg}" in out["plan"]["launch"]


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["--set", "bogus=1"], ["unknown field 'bogus'"]),
        (["--set", "executor.kind=slurm"], ["executor.kind", "'local' or 'ray'"]),
        (["--set", "alignment.methods=[dpo]", "--set", "alignment.subset_methods=[rdpo]"],
         ["alignment.subset_methods", "rdpo"]),
        (["--set", "family.kind=hf"], ["family.models"]),
        (["--set", "sparsity.targets=[0.5,1.5]"], ["sparsity.targets"]),
        (["--set", "family.sizes=[micro-zz]"], ["family.sizes", "micro-zz", "micro-xs"]),
        (["--set", "sparsity.targets=[0.501,0.502]"], ["sparsity.targets", "same cells"]),
        (["--set", "alignment.methods=[dpo,orpo,dpo]"], ["alignment.methods", "dpo is listed twice"]),
        (["--set", "alignment.settings.bta=1"], ["unknown field 'alignment.settings.bta'", "beta"]),
        (["--only", "eval:nope"], ["--only", "eval:nope"]),
        (["--preset", "nope"], ["preset", "nope"]),
        (["--name", "../x"], ["run name"]),
    ],
    ids=["unknown-field", "bad-executor", "subset-not-in-methods", "hf-without-models", "target-1.5",
         "unknown-size", "colliding-targets", "duplicate-method", "align-settings-typo", "unknown-only", "unknown-preset", "bad-name"],
)
def test_config_errors_are_one_line_and_write_nothing(cli, tmp_path: Path, overrides, needles):
    res = cli("study", *overrides, env=OFFLINE)
    assert res.returncode == 2
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "runs").exists()


def test_config_file_errors_name_the_file(cli, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsparsity:\n  targets: [0.5]\n  mode: [static]\n")
    res = cli("study", "--config", str(bad), env=OFFLINE)
    assert res.returncode == 2
    assert_one_line_error(res, str(bad), "mode", "modes")
    res = cli("study", "--config", str(bad), "plan", env=OFFLINE)
    assert_one_line_error(res, str(bad), "mode")
    assert not (tmp_path / "runs").exists()


def test_help_is_useful(cli):
    res = cli("study", "--help")
    assert res.returncode == 0
    for needle in ("--config", "--preset", "--set", "--only", "--restart", "--json", "plan", "report", "resumes", "executor.kind=ray"):
        assert needle in res.stdout, needle
    res = cli("study", "plan", "--help")
    assert res.returncode == 0
    for needle in ("memory", "launch", "CONFIG_PATH", "--preset paper plan", "--json"):
        assert needle in res.stdout, needle
