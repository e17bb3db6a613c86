"""`sparsealign align` shows its progress (issue 23 item 2): a bar with ETA and the running loss / reward accuracy
on a terminal, one plain line per logging step otherwise; stdout stays the `--json` result's."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import threading

import pytest

from conftest import sparsealign_exe
from sparsealign.data.preference import load_pairs
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

HH = "hh-rlhf/helpful-base/test.jsonl.gz"
ARGS = ("align", "--method", "simpo", "--data", HH, "--set", "max_pairs=8", "--set", "max_steps=4",
        "--set", "batch_size=2", "--set", "logging_steps=1", "--set", "max_length=48", "--set", "max_prompt_length=16")


@pytest.fixture(scope="module")
def model_dir(data_dir, tmp_path_factory):
    pairs = load_pairs(data_dir / HH, warn=False).pairs[:200]
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs], vocab_size=384,
                                          hidden_size=32, num_layers=2, num_heads=2, seed=0)
    return save_pretrained(model, tok, tmp_path_factory.mktemp("tiny") / "model")


def _env(tmp_path, data_dir):
    return {**os.environ, "SPARSEALIGN_DATA_DIR": str(data_dir), "SPARSEALIGN_RUNS_DIR": str(tmp_path / "runs"),
            "SPARSEALIGN_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def test_a_line_per_logging_step_when_stderr_is_not_a_terminal(tmp_path, data_dir, model_dir):
    proc = subprocess.run([*sparsealign_exe(), *ARGS, "--model", str(model_dir), "--name", "plain", "--json"],
                          env=_env(tmp_path, data_dir), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = re.findall(r"^align simpo step (\d)/4: loss=([\d.]+) .*rewards/accuracies=([\d.]+)", proc.stderr, re.M)
    assert [s for s, _, _ in steps] == ["1", "2", "3", "4"], proc.stderr[-3000:]
    assert all(0 < float(loss) < 10 and 0 <= float(acc) <= 1 for _, loss, acc in steps)
    assert "\r" not in proc.stderr  # no bar redraws in a log file
    assert json.loads(proc.stdout)["method"] == "simpo"  # stdout holds only the result


def test_a_bar_with_eta_loss_and_accuracy_on_a_terminal(tmp_path, data_dir, model_dir):
    primary, secondary = pty.openpty()  # stderr is a real terminal, 30 x 120 (a new pty is 0 x 0: tqdm draws nothing)
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    proc = subprocess.run([*sparsealign_exe(), *ARGS, "--model", str(model_dir), "--name", "tty", "--json"],
                          env=_env(tmp_path, data_dir), cwd=tmp_path, stdout=subprocess.PIPE, stderr=secondary,
                          stdin=subprocess.DEVNULL, timeout=600)
    os.close(secondary)
    reader.join(timeout=10)
    os.close(primary)
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert proc.returncode == 0, screen[-3000:]
    # tqdm: "align simpo: 100%|████| 4/4 [00:02<00:00,  1.9step/s, loss=0.6931, acc=0.5000]"
    bar = re.findall(r"align simpo:.*?(\d)/4 \[[\d:]+<([\d:?]+),[^\]]*loss=([\d.]+), acc=([\d.]+)\]", screen)
    assert bar and bar[-1][0] == "4", screen[-3000:]
    assert "\r" in screen  # redrawn in place
    assert re.search(r"align simpo step 4/4: loss=", screen)  # logging steps are printed above the bar
    assert json.loads(proc.stdout)["method"] == "simpo"
