"""The dynamic controller's teacher-forced scan (every position's threshold, in order): one C call per layer
(`kernels.controller_scan`, radix-bucketed quantile) against the numpy loop it replaced, both beside the forward pass
they ride on, in one run.

    .venv/bin/python benchmarks/controller_scan.py [--batch 8] [--tokens 256] [--layers 30] [--repeats 3]

Shape: SmolLM2-135M (hidden 576, FFN 1536, 30 layers, 9 heads / 3 KV heads, vocab 49152) with random weights in
bf16, as the real preset loads it; the scanned values are the model's own |SiLU(gate x)| of each layer (captured by
a hook), at target 0.3.  Why it matters: in the real preset's measured run (docs/study.md) a dynamic cell's
teacher-forced scoring took 2.3x the static one's.  Goal: the scan adds <= 25% to a scoring forward (numpy: ~200%).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparsealign.sparse.config import ControllerConfig
from sparsealign.sparse.runtime import kernels
from sparsealign.sparse.runtime.controller import ThresholdController


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.3)
    args = ap.parse_args()
    lib = kernels.load()
    if lib is None:
        raise SystemExit("error: the C kernel library could not be built here (no C compiler); nothing to compare")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=args.layers, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    acts: list[np.ndarray] = []
    hooks = [layer.mlp.act_fn.register_forward_hook(lambda m, i, o: acts.append(o.abs().float().numpy()))
             for layer in model.model.layers]
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.tokens))
    with torch.no_grad():
        model(ids)
        for h in hooks:
            h.remove()
        forward = best_of(args.repeats, lambda: model(ids))
    acts = [np.ascontiguousarray(a) for a in acts]

    def scan(kind: str) -> None:
        ctl = ThresholdController([0.1] * len(acts), [args.target] * len(acts), [1.0] * len(acts), ControllerConfig())
        for c, a in enumerate(acts):
            ctl._rows(c, a.shape[0])
            (ctl._scan_c(lib, c, a, None, None) if kind == "c" else ctl._scan_numpy(c, a, None, None))

    c_s, np_s = best_of(args.repeats, lambda: scan("c")), best_of(args.repeats, lambda: scan("numpy"))
    print(f"shape [{args.batch}, {args.tokens}, 1536] x {args.layers} layers, {torch.get_num_threads()} threads")
    print(f"forward (bf16): {forward * 1000:.0f} ms")
    print(f"scan numpy: {np_s * 1000:.0f} ms = {np_s / forward:.0%} of the forward")
    print(f"scan C:     {c_s * 1000:.0f} ms = {c_s / forward:.0%} of the forward")
    print(f"ratio numpy / C: {np_s / c_s:.1f}x  (goal: C scan <= 25% of the forward: "
          f"{'met' if c_s / forward <= 0.25 else 'not met'})")


if __name__ == "__main__":
    main()
