"""Benchmark: `sparsealign eval mbpp --model M --split test` at its defaults, per task, and its pass@1 against the
study's base dense cell settings on the same tasks.

    .venv/bin/python benchmarks/eval_mbpp_defaults.py [--model smollm2-135m-instruct] [--limit N]
                                                      [--study-records FILE] [--threads N] [--json]

1. The verb as a user runs it: a subprocess with no flag but --model, --split test (and --limit N); its wall time
   includes Python start, the model load and the sandbox, so s/task = wall / tasks.
2. The study's MBPP step on the same tasks.  With --study-records (a finished study's per-task table, e.g.
   runs/S/eval/<base dense cell>/mbpp.parquet or mbppfull.parquet) its rows for those tasks are read; otherwise
   its path runs here: the model loaded as a study cell loads it (`LoadSettings()`), the run config built as
   `study.evaluation._mbpp` builds it from `EvaluationConfig`'s defaults, with the verb's token budget (the same
   prompt, lm-eval 3-shot, and the same max tokens; greedy decoding does not depend on the batch size, so the
   completions and pass@1 must be equal).  Its time excludes the model load.
--threads N sets OMP_NUM_THREADS for the verb and torch's threads here (default: torch's own, the cores); on busy
shared cores use 1 (measured: a 2-thread region there was 3-5x slower than 1 thread on the same prompts).
Goal (issue 23): all 500 test tasks in <= 15 min on an idle 2-core machine, with the study's pass@1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def run_verb(model: str, limit: int | None, out: Path, threads: int | None) -> tuple[dict, float]:
    exe = Path(sys.executable).with_name("sparsealign")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    cmd = [str(exe), "eval", "mbpp", "--model", model, "--split", "test", "--out", str(out), "--json"]
    cmd += ["--limit", str(limit)] if limit else []
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"eval mbpp failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout), wall


def run_study_step(model: str, task_ids: list[int], max_new_tokens: int) -> tuple[pd.DataFrame, float]:
    """The study's MBPP step (`study.evaluation._mbpp`'s run config) on these tasks, in this process."""
    from sparsealign.data.mbpp.tasks import load_mbpp
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig
    from sparsealign.evaluate.mbpp.run import MbppRunConfig, evaluate_loaded
    from sparsealign.models.loading import LoadSettings, load_model
    from sparsealign.study.config import EvaluationConfig

    ev = EvaluationConfig(max_new_tokens=max_new_tokens)
    tasks = [t for t in load_mbpp(split=ev.mbpp_split) if t.task_id in set(task_ids)]
    cfg = MbppRunConfig(split=ev.mbpp_split, limit=len(tasks), chunk_size=len(tasks),
                        eval=MbppEvalConfig(format=ev.prompt_format, shots=ev.shots, workers=ev.sandbox_workers,
                                            ci_resamples=ev.bootstrap,
                                            sampling=SamplingConfig(max_new_tokens=ev.max_new_tokens,
                                                                    batch_size=ev.generation_batch_size)))
    model_, tok = load_model(model, LoadSettings())
    t0 = time.perf_counter()
    _, records = evaluate_loaded(cfg, model_, tok, tasks)
    return pd.DataFrame(records), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=None, help="the first N test tasks (default: all 500)")
    ap.add_argument("--study-records", default=None, metavar="FILE",
                    help="a finished study's per-task MBPP table of the base dense cell (.parquet or .jsonl)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads, both runs (default: torch's own)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    with tempfile.TemporaryDirectory() as tmp:
        summary, wall = run_verb(args.model, args.limit, Path(tmp) / "records.parquet", args.threads)
        verb = pd.read_parquet(Path(tmp) / "records.parquet")
    n = summary["total"]
    log(f"eval mbpp (defaults): {n} tasks in {wall:.1f} s = {wall / n:.2f} s/task, pass@1 {summary['pass@1']:.4f}")
    from sparsealign.evaluate.mbpp.cli import MAX_NEW_TOKENS

    if args.study_records:
        path = Path(args.study_records)
        study = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
        study_s = None
    else:
        study, study_s = run_study_step(args.model, list(verb["task_id"]), MAX_NEW_TOKENS)
        log(f"study MBPP step: {n} tasks in {study_s:.1f} s = {study_s / n:.2f} s/task (model load excluded)")
    both = verb.merge(study, on="task_id", suffixes=("_verb", "_study"))
    result = {
        "model": args.model, "tasks": n, "wall_s": round(wall, 1), "s_per_task": round(wall / n, 3),
        "pass@1": summary["pass@1"], "max_new_tokens": MAX_NEW_TOKENS, "threads": args.threads,
        "study": {"source": args.study_records or "study MBPP step, this process",
                  "tasks_compared": len(both),
                  "pass@1": float((both["status_study"] == "passed").mean()) if len(both) else None,
                  "s_per_task": None if study_s is None else round(study_s / n, 3)},
        "verb_pass@1_on_compared": float((both["status_verb"] == "passed").mean()) if len(both) else None,
        "identical_completions": int((both["completion_verb"] == both["completion_study"]).sum()),
        "goal": "500 tasks <= 900 s on an idle 2-core machine; pass@1 equal to the study's",
    }
    if args.json:
        print(json.dumps(result))
        return
    st = result["study"]
    print(f"eval mbpp defaults: {n} tasks, {wall:.1f} s wall, {result['s_per_task']} s/task "
          f"(500 tasks ~ {500 * wall / n / 60:.1f} min at this rate), pass@1 {summary['pass@1']:.4f}; "
          f"study settings on the same {st['tasks_compared']} tasks: pass@1 {st['pass@1']:.4f}"
          + (f", {st['s_per_task']} s/task" if st["s_per_task"] is not None else "")
          + f"; identical completions {result['identical_completions']}/{st['tasks_compared']}")


if __name__ == "__main__":
    main()
