"""lm-evaluation-harness task directory (`lm_eval --include_path DIR`) that runs offline: its `mbpp` is lm-eval's
`mbpp` (the same 3-shot prompt, stop and greedy decoding) with the data read from the data directory by our MBPP
loader instead of the hub, and every program run in our sandbox instead of HF `code_eval` (no
HF_ALLOW_CODE_EVAL, no --confirm_run_unsafe_code).  `sparsealign eval lm-eval-tasks` prints the directory.

Kept import-light (stdlib only): the CLI prints the path without torch or lm-eval.
"""

from __future__ import annotations

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent


def task_names() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
