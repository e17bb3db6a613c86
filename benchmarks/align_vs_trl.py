"""Benchmark: our DPO (precomputed, cached reference log-probs; one policy in memory) against TRL's `DPOTrainer`
(default: reference model forward every step) on the same tiny Llama, HH pairs, batch and sequence length.

    .venv/bin/python benchmarks/align_vs_trl.py [--steps 12] [--batch 8] [--max-length 128] [--repeats 2]
                                               [--trl-precompute]

Each side runs in its own child process (so peak memory is its own), alternating ours/TRL `--repeats` times.
samples/s is batch / the fastest optimizer step seen (a shared machine only ever slows a step down, so the fastest
step is the best estimate of the uncontended speed); `loop` is the Trainer's whole-loop `train_samples_per_second`
(best run) and `wall` adds model load and, for ours, the one-time reference pass (cold cache).  Peak memory: CUDA max allocated on GPU, else the growth of the
process's peak RSS over its footprint after imports.  Goal: ours/TRL samples/s >= 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HH = "hh-rlhf/helpful-base/test.jsonl.gz"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build_model(out: Path, args) -> list:
    from sparsealign.data.preference import load_pairs
    from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

    pairs = load_pairs(HH, split="train", warn=False).pairs[: args.steps * args.batch]
    if not (out / "config.json").exists():
        texts = [p.prompt + p.chosen + p.rejected for p in load_pairs(HH, warn=False).pairs[:500]]
        model, tok = tiny_model_and_tokenizer(texts, vocab_size=args.vocab, hidden_size=args.hidden,
                                              num_layers=args.layers, num_heads=4, seed=0)
        save_pretrained(model, tok, out)
    return pairs


def step_timer():
    """A TrainerCallback recording the duration of every optimizer step (both sides are transformers Trainers)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.steps.append(time.perf_counter() - self._start)

    return StepTimer()


def run_ours(model_dir: Path, pairs: list, args, work: Path) -> dict:
    from sparsealign.align.config import AlignConfig
    from sparsealign.align.engine import run_align
    from sparsealign.rundir import RunDir

    cfg = AlignConfig(method="dpo", model=str(model_dir), data=HH, batch_size=args.batch, max_steps=args.steps,
                      max_length=args.max_length, max_prompt_length=args.max_length // 2, lr=1e-4,
                      logging_steps=1000, save_steps=100_000, bf16=False)
    run = RunDir.open("bench", "align", cfg, runs_root=work / "runs", restart=True)
    timer = step_timer()
    m = run_align(cfg, run, pairs=pairs, callbacks=[timer])
    return {"samples_per_s": args.batch / min(timer.steps), "loop": m["train_samples_per_second"],
            "steps": timer.steps, "train_loss": m["train_loss"]}


def run_trl(model_dir: Path, pairs: list, args, work: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = None if args.trl_precompute else AutoModelForCausalLM.from_pretrained(model_dir)
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    cfg = DPOConfig(output_dir=str(work / "trl"), beta=0.1, learning_rate=1e-4, per_device_train_batch_size=args.batch,
                    max_steps=args.steps, max_length=args.max_length, truncation_mode="keep_end",
                    precompute_ref_log_probs=args.trl_precompute, report_to="none", logging_steps=1000,
                    save_strategy="no", use_cpu=not _has_gpu(), bf16=False, disable_tqdm=True)
    trainer = DPOTrainer(model=model, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    timer = step_timer()
    trainer.add_callback(timer)
    out = trainer.train()
    return {"samples_per_s": args.batch / min(timer.steps), "loop": out.metrics["train_samples_per_second"],
            "steps": timer.steps, "train_loss": out.metrics["train_loss"]}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    pairs = build_model(work / "model", args)
    base_rss, t0 = rss_mb(), time.perf_counter()
    if _has_gpu():
        torch.cuda.reset_peak_memory_stats()
    result = (run_ours if args.child == "ours" else run_trl)(work / "model", pairs, args, work)
    result["wall_s"] = time.perf_counter() - t0
    result["peak_mb"] = torch.cuda.max_memory_allocated() / 2**20 if _has_gpu() else rss_mb() - base_rss
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the best of each is kept")
    ap.add_argument("--trl-precompute", action="store_true", help="also give TRL precompute_ref_log_probs=True")
    ap.add_argument("--child", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory(prefix="align-bench-") as work:
        results: dict[str, dict] = {}
        passthrough = list(sys.argv[1:])
        for rep in range(args.repeats):
            # a fresh reference cache per run: every run of ours pays its reference pass (counted in `wall`)
            env = {**os.environ, "SPARSEALIGN_CACHE_DIR": str(Path(work) / f"cache{rep}"), "TQDM_DISABLE": "1"}
            for side in ("ours", "trl"):  # ours first also builds the shared model
                proc = subprocess.run([sys.executable, __file__, *passthrough, "--child", side, "--work", work],
                                      env=env, capture_output=True, text=True)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not lines:
                    sys.exit(f"{side} failed:\n{proc.stderr[-3000:]}")
                r = json.loads(lines[-1][len("RESULT "):])
                best = results.setdefault(side, {**r, "steps": []})
                for key in ("samples_per_s", "loop"):
                    best[key] = max(best[key], r[key])
                best["steps"] += r["steps"]
    trl_name = "TRL DPOTrainer" + (" (precompute_ref_log_probs)" if args.trl_precompute else " (ref model in memory)")
    print(f"setup: tiny Llama hidden={args.hidden} layers={args.layers} vocab={args.vocab}, {args.steps} steps x "
          f"batch {args.batch} HH pairs, max_length {args.max_length}, {args.threads} threads, {args.repeats} runs per side")
    for side, name in (("ours", "sparsealign DPO (cached ref)"), ("trl", trl_name)):
        r = results[side]
        print(f"{name:44s} {r['samples_per_s']:7.2f} samples/s (loop {r['loop']:5.2f})  peak {r['peak_mb']:7.1f} MB"
              f"  wall {r['wall_s']:5.1f} s  loss {r['train_loss']:.4f}")
    speed = results["ours"]["samples_per_s"] / results["trl"]["samples_per_s"]
    mem = results["trl"]["peak_mb"] / max(results["ours"]["peak_mb"], 1e-9)
    median = statistics.median(results["trl"]["steps"]) / statistics.median(results["ours"]["steps"])
    print(f"ratio samples/s ours/TRL = {speed:.2f}x (goal >= 1.3x; median step ratio {median:.2f}x); "
          f"peak memory TRL/ours = {mem:.2f}x")


if __name__ == "__main__":
    main()
