"""Benchmark: MBPP generation tokens/s, our batched greedy path (shared 3-shot prefix KV cached once, per-row
[DONE] stop, finished rows leave the batch) vs plain HF `model.generate` one prompt at a time, on the same tasks.

    .venv/bin/python benchmarks/mbpp_generation.py [--model smollm2-135m-instruct] [--tasks 50] [--batch-size 16]
                                                   [--max-new-tokens 128] [--sparsity 0.5] [--threads 2] [--json]

Both paths use the lm-eval 3-shot prompt of the first --tasks MBPP test tasks, greedy decoding and the same stop
test; tokens/s = generated tokens / wall seconds of the whole path (prefix and prefill included).  The baseline is
`SamplingConfig(batch_size=1, prefix_cache=False)`, i.e. one `model.generate` call per prompt.  The tokens of the
two paths are compared (they should be identical).  With --sparsity S > 0 the batched path is also timed under
static thresholds calibrated for S on |SiLU(gate)| (MBPP train code as calibration text).  Goal: ratio >= 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def timed(model, tok, prompts, cfg, stop):
    from sparsealign.evaluate.generation import generate

    t0 = time.perf_counter()
    gens = generate(model, tok, prompts, cfg, stop=stop)
    wall = time.perf_counter() - t0
    ids = [g[0].completion_ids for g in gens]
    tokens = sum(len(x) for x in ids)
    return {"seconds": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2)}, ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.5, help="static target for the sparse row; 0 skips it")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (2 = this machine's cores; on shared, busy cores use 1: a 2-thread region "
                         "stalls on a descheduled peer)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from sparsealign.data.mbpp.prompts import make_format
    from sparsealign.data.mbpp.tasks import load_mbpp
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.models.loading import load_model_and_tokenizer

    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model, device="cpu", dtype="float32")
    fmt = make_format("lm-eval", load_mbpp(split="prompt"))
    tasks = load_mbpp(split="test")[: args.tasks]
    prompts, stop = [fmt.prompt(t) for t in tasks], fmt.stop_sequences
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    batched_cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    plain_cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, batch_size=1, prefix_cache=False)
    log(f"{len(prompts)} MBPP test tasks, max {args.max_new_tokens} new tokens, {args.threads} threads")
    timed(model, tok, prompts[:1], plain_cfg.model_copy(update={"max_new_tokens": 4}), stop)  # warm-up: pages, kernels
    ours, ours_ids = timed(model, tok, prompts, batched_cfg, stop)
    log(f"batched+prefix cache: {ours}")
    plain, plain_ids = timed(model, tok, prompts, plain_cfg, stop)
    log(f"plain generate x1:    {plain}")
    result = {
        "model": args.model, "tasks": len(prompts), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "threads": args.threads,
        "dense_batched": ours, "plain_generate_one_at_a_time": plain,
        "ratio_tokens_per_s": round(ours["tokens_per_s"] / plain["tokens_per_s"], 2),
        "identical_tokens": sum(a == b for a, b in zip(ours_ids, plain_ids, strict=True)),
        "goal": ">= 3x",
    }
    if args.sparsity > 0:
        from sparsealign.sparse.calibration.calibrate import calibrate
        from sparsealign.sparse.config import SparsityConfig
        from sparsealign.sparse.runtime.patch import apply_sparsity

        calib = [t.code for t in load_mbpp(split="train")[:32]]
        art = calibrate(model, tok, calib, SparsityConfig(target_sparsity=args.sparsity))
        with apply_sparsity(model, art, "static") as handle:
            sparse, _ = timed(model, tok, prompts, batched_cfg, stop)
            sparse["realized_sparsity"] = round(handle.stats()["realized_sparsity"], 3)
        sparse["target_sparsity"] = args.sparsity
        log(f"batched, static sparse: {sparse}")
        result["sparse_static_batched"] = sparse
    if args.json:
        print(json.dumps(result))
    else:
        print(f"dense batched {ours['tokens_per_s']} tok/s vs plain generate {plain['tokens_per_s']} tok/s: "
              f"{result['ratio_tokens_per_s']}x (goal >= 3x); identical completions "
              f"{result['identical_tokens']}/{len(prompts)}"
              + (f"; static sparse {args.sparsity:.0%} batched {result['sparse_static_batched']['tokens_per_s']} "
                 "tok/s" if args.sparsity > 0 else ""))


if __name__ == "__main__":
    main()
