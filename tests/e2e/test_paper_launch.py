"""The paper preset's by-hand align line, as `study --preset paper plan` prints it, run on CPU: its accelerate
config swapped for the CPU one (2 processes, gloo) and only the hub id and pairs swapped for a tiny local model
and 64 HH pairs; the test appends the step and length limits the quickstart test uses."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from e2e.test_quickstart import QUICK
from sparsealign.data.preference import load_pairs
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

pytestmark = pytest.mark.slow


def test_the_printed_accelerate_align_line_runs_on_cpu(cli, tmp_path, data_dir):
    plan = cli("study", "--preset", "paper", "plan", "--json")
    assert plan.returncode == 0, plan.stderr
    line = next(cmd for cmd in plan.json()["launch"] if cmd.startswith("accelerate launch"))
    words = shlex.split(line.split("#")[0])
    pairs = load_pairs(data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=64).pairs
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
                                  + "\n" for p in pairs), encoding="utf-8")
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen for p in pairs], vocab_size=400, hidden_size=32,
                                          num_layers=2, intermediate_size=96, max_position_embeddings=2048)
    model_dir = save_pretrained(model, tok, tmp_path / "model")
    swap = {"configs/accelerate/zero3.yaml": "configs/accelerate/cpu.yaml",
            words[words.index("--model") + 1]: str(model_dir), words[words.index("--data") + 1]: str(pairs_file)}
    argv = [str(Path(sys.executable).parent / "accelerate"), *[swap.get(w, w) for w in words[1:]], *QUICK["align"]]
    runs = tmp_path / "runs"
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                         env={**os.environ, "SPARSEALIGN_RUNS_DIR": str(runs), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    name = words[words.index("--name") + 1]
    record = json.loads(next(runs.glob(f"{name}/align/**/sparsealign_alignment.json")).read_text())
    assert record["method"] == "dpo"


def test_the_printed_ray_lines_run_a_study_on_a_local_cluster(cli, tmp_path, data_dir):
    """`ray start --head` then `sparsealign study ... --set executor.address=auto`, as the paper plan prints them,
    on this machine: the paper preset swapped for the reduced study (tiny micro model) and Ray held to 2 CPUs.
    The cluster-run study gives the reduced study's own results."""
    import pandas as pd

    from e2e.test_reduced_grid import FIXTURES, assert_columns_equal, canonical

    lines = cli("study", "--preset", "paper", "plan", "--json").json()["launch"]
    start = shlex.split(next(cmd for cmd in lines if cmd.startswith("ray start")).split("#")[0])
    joined = shlex.split(next(cmd for cmd in lines if "executor.address=auto" in cmd).split("#")[0])
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_RUNS_DIR": str(tmp_path / "runs"),
           "SPARSEALIGN_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(bin_dir / "ray")
    up = subprocess.run([ray, *start[1:], "--num-cpus", "2", "--include-dashboard", "false"], env=env,
                        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert up.returncode == 0, up.stderr[-2000:]
    try:
        reduced = ["--config", str(FIXTURES / "reduced_study.yaml"), "--set", "executor.kind=ray"]
        args = [w for w in joined[1:] if w not in ("--preset", "paper")]
        args[args.index("study") + 1:args.index("study") + 1] = reduced
        out = subprocess.run([str(bin_dir / "sparsealign"), *args, "--json"], env=env, capture_output=True,
                             text=True, timeout=900, stdin=subprocess.DEVNULL, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        summary = json.loads(out.stdout)
        assert summary["failed"] == 0 and summary["done"] == 13
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    expected = pd.read_csv(FIXTURES / "reduced_study_results.csv")
    assert_columns_equal(canonical(tmp_path / "runs" / "reduced" / "results.parquet"), expected, expected.columns)
