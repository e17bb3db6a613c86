"""Budget of `sparsealign study --preset real`: the cost of each cell type on SmolLM2-135M-Instruct, measured on
small samples, as wall seconds and CPU seconds per unit, with the extrapolation to an idle 2-core machine.

    .venv/bin/python benchmarks/real_study_budget.py [--tasks 8] [--pairs 16] [--max-new-tokens 128] [--json]
        [--modes dense,static,dynamic] [--target 0.4] [--threads 2]

Units, per sparsity mode (thresholds calibrated like the preset's calibrate cell: CATS on |SiLU(gate)|, 64 MBPP
train solutions, `--target`): MBPP generation (lm-eval 3-shot, the greedy path of evaluate/greedy.py with
continuous batching) -> s per task and tokens/s; the continuous metric (reference-solution NLL, one forward over
prompt + reference per task, every token sparse as in the study) -> s per task;
teacher-forced preference scoring (the eval verbs' scoring) -> s per pair; LoRA DPO alignment (the align engine,
reference log-probs and merge included) -> s per pair-epoch; self-rationales (`rationales generate --source hf`'s
generator) -> s per pair.  CPU seconds are this process's user+system time plus its children's (the sandbox), so
they stay meaningful on a shared, overloaded machine where wall time is not: the idle-2-core estimate is
CPU seconds / (2 x EFFICIENCY), EFFICIENCY being the 2-thread speed-up of torch matmuls on this model over 2 threads
(0.8 assumed: batched fp32 matmuls of a 576-wide model).  Measure with --threads 1 on a busy machine: with 2
threads an OpenMP region spins while its peer thread is descheduled, and that spin counts as CPU time.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

EFFICIENCY = 0.8  # 2-thread speed-up 1.6x on an idle 2-core machine (assumed, see above)


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, cpu_seconds() - self.c0


def row(name: str, clock: Clock, units: int, unit: str, **extra: float) -> dict:
    out = {"cell": name, "unit": unit, "units": units, "wall_s": round(clock.wall, 2), "cpu_s": round(clock.cpu, 2),
            "cpu_s_per_unit": round(clock.cpu / units, 3),
            "idle_2core_s_per_unit": round(clock.cpu / units / (2 * EFFICIENCY), 3), **extra}
    print(json.dumps(out), file=sys.stderr, flush=True)  # as soon as measured: a long run keeps what it has
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rationale-tokens", type=int, default=48)
    ap.add_argument("--only", default="generation,likelihood,scoring,rationales,align",
                    help="comma-separated subset of: generation, likelihood, scoring, rationales, align")
    ap.add_argument("--batch-size", type=int, default=2, help="align: pairs per step (grad_accum makes it 8)")
    ap.add_argument("--generation-batch", type=int, default=32, help="MBPP prompts decoded at once")
    ap.add_argument("--modes", default="dense", help="comma-separated: dense, static, dynamic (generation, likelihood)")
    ap.add_argument("--target", type=float, default=0.4, help="sparsity target of the static / dynamic modes")
    ap.add_argument("--threads", type=int, default=1, help="1: CPU time is work, not OpenMP spin on a busy box")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import contextlib

    import torch

    from sparsealign.align.config import AlignConfig
    from sparsealign.align.engine import run_align
    from sparsealign.align.rationales import fill_rationales, hf_generator
    from sparsealign.data.mbpp.tasks import load_mbpp
    from sparsealign.data.preference import load_pairs
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig
    from sparsealign.evaluate.mbpp.likelihood import code_likelihood, reference_text
    from sparsealign.evaluate.mbpp.run import MbppRunConfig, evaluate_loaded
    from sparsealign.evaluate.preference.run import PreferenceRunConfig
    from sparsealign.evaluate.preference.run import evaluate_loaded as score_loaded
    from sparsealign.ledger import Ledger
    from sparsealign.models.loading import load_model_and_tokenizer
    from sparsealign.rundir import RunDir
    from sparsealign.sparse.calibration.calibrate import calibrate
    from sparsealign.sparse.config import SparsityConfig
    from sparsealign.sparse.runtime.patch import apply_sparsity

    torch.set_num_threads(args.threads)
    rows = []
    with Clock() as c:
        model, tok = load_model_and_tokenizer(args.model, device="cpu", dtype="float32")
    rows.append(row("load", c, 1, "load"))

    only = set(args.only.split(","))
    split = load_mbpp(split="test")
    tasks = split[:: max(1, len(split) // args.tasks)][: args.tasks]  # spread over the split: the first tasks
    # are shorter than the rest (the first 64 cost 0.86 s each to generate densely, all 500 1.14 s in the study)
    cfg = MbppRunConfig(split="test", limit=args.tasks, chunk_size=args.tasks, eval=MbppEvalConfig(
        format="lm-eval", shots=3, workers=2,
        sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.generation_batch)))
    modes = args.modes.split(",")
    art = None
    if set(modes) - {"dense"}:
        texts = [reference_text(t) for t in load_mbpp(split="train")[:64]]
        with Clock() as c:
            art = calibrate(model, tok, texts, SparsityConfig(target_sparsity=args.target))
        rows.append(row("calibrate", c, 1, "calibration (64 texts)"))
    for mode in modes:
        with apply_sparsity(model, art, mode, "dense") if mode != "dense" else contextlib.nullcontext() as handle:
            if "generation" in only:
                with Clock() as c:
                    summary, records = evaluate_loaded(cfg, model, tok, tasks)
                tokens = sum(len(tok(r["completion"])["input_ids"]) for r in records)
                p1 = summary["pass@1"]
                rows.append(row(f"mbpp_generation_{mode}", c, len(tasks), "task", tokens=tokens,
                                tokens_per_cpu_s=round(tokens / c.cpu, 1) if tokens else 0.0,
                                pass_at_1=float(p1["estimate"] if isinstance(p1, dict) else p1)))
            if "likelihood" in only:
                every_token = handle.dense_prefix(0) if handle is not None else contextlib.nullcontext()
                with Clock() as c, every_token:
                    code_likelihood(model, tok, tasks, n_resamples=100)
                rows.append(row(f"likelihood_{mode}", c, len(tasks), "task"))

    pairs = load_pairs("hh-rlhf/helpful-base/test.jsonl.gz", warn=False).pairs[: args.pairs]
    pcfg = PreferenceRunConfig(model=args.model, method="simpo", beta=1.0, data="-", max_length=args.max_length,
                               max_prompt_length=args.max_length * 5 // 8, n_resamples=100)
    if "scoring" in only:
        with Clock() as c:
            score_loaded(pcfg, model, tok, pairs)
        rows.append(row("preference_scoring", c, len(pairs), "pair"))

    if "rationales" in only:
        rat_pairs = copy.deepcopy(pairs[: max(4, args.pairs // 4)])
        gen = hf_generator(model, tok, batch_size=8, max_new_tokens=args.rationale_tokens, temperature=0.0)
        with Clock() as c:
            fill_rationales(rat_pairs, gen, source="hf:budget", save=lambda ps: None, save_every=10_000)
        rows.append(row("self_rationales", c, len(rat_pairs), "pair"))
    del model
    if "align" not in only:
        print(json.dumps({"efficiency_assumed": EFFICIENCY, "rows": rows}, indent=1))
        return

    with tempfile.TemporaryDirectory() as tmp:
        acfg = AlignConfig(method="dpo", model=args.model, data="-", cell="budget", max_length=args.max_length,
                           max_prompt_length=args.max_length * 5 // 8, lora={}, batch_size=args.batch_size,
                           grad_accum=max(1, 8 // args.batch_size), epochs=1.0,
                           logging_steps=100, save_steps=100_000)
        run = RunDir(root=Path(tmp), ledger=Ledger(Path(tmp) / "ledger.sqlite"))
        with Clock() as c:
            run_align(acfg, run, pairs=pairs, eval_pairs=[])
        run.close()
    rows.append(row("lora_dpo_align", c, len(pairs), "pair-epoch (incl. reference pass + merge)"))

    if args.json:
        print(json.dumps({"efficiency_assumed": EFFICIENCY, "rows": rows}, indent=1))
    else:
        for r in rows:
            print(r, file=sys.stdout)


if __name__ == "__main__":
    main()
