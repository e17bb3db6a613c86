"""Batch-1 fp32 CPU decode: dense vs PowerInfer-style sparse FFN (static / dynamic / predictor) on a 1B-shaped
ReLU Llama with random weights, all in one run, with each side's roofline.

    .venv/bin/python benchmarks/sparse_decode.py [--layers 22] [--tokens 16] [--repeats 2] [--threads 1]

Shape: TinyLlama-1.1B widths (hidden 2048, FFN 5632, 32 heads / 4 KV heads, vocab 32000), ReLU MLP.  By default
the full 22 layers run when the machine has the memory (~8 GB incl. the neuron-major copies), else 4 layers and
the end-to-end numbers are extrapolated to 22 layers from the measured per-layer and outside-layer times
(column `e2e@22`).  Method: sparsealign.sparse.bench.speed (the static-KV decoder of sparse.decode; dense and sparse
decoded side by side, alternating every token step; bytes per step counted, bandwidth measured in-process).
Static/dynamic rows use the exact int8 gate pre-check (sparse.runtime.fastpath), predictor rows the predicted set.

Goals (issue 13), at 90%: predictor >= 2.2x end to end, static and dynamic >= 1.8x, every row >= 0.8 of its own
ideal (= dense bytes / sparse bytes per token); dense decode >= 0.6 of its roofline.
"""

from __future__ import annotations

import argparse
import sys
import time

FULL_LAYERS = 22


def mem_available_gb() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def kernel_breakdown(model, x, sparsity: float = 0.9, reps: int = 20) -> dict:
    """One layer's FFN at batch 1: dense vs the sparse fast path, and the pieces of the latter (ms, median)."""
    import statistics

    import torch

    from sparsealign.sparse.runtime.fastpath import NeuronMajor

    mlp = model.model.layers[0].mlp
    nm = NeuronMajor(mlp)
    a = nm.gate(x)
    abs_a = a.abs()
    t = float(abs_a.kthvalue(max(1, round(sparsity * abs_a.numel()))).values)
    x3 = x.view(1, 1, -1)

    def sparse_total():
        g = nm.gate(x)
        return nm.from_gate(x, g, g.abs(), t)

    nm8 = NeuronMajor(mlp, precheck=True)

    def precheck_total():
        g = nm8.gate(x, t)
        return nm8.from_gate(x, g, g.abs(), t)

    cases = {
        "dense MLP (3 matvecs)": lambda: mlp(x3),
        "sparse FFN with int8 gate pre-check (exact)": precheck_total,
        "  gate via pre-check (int8 + candidate rows)": lambda: nm8.gate(x, t),
        "sparse FFN total (gate + select + up/down)": sparse_total,
        "  gate matvec (dense, decides the set)": lambda: nm.gate(x),
        "  up/down on the active set (from_gate)": lambda: nm.from_gate(x, a, abs_a, t),
    }
    times = {k: [] for k in cases}
    with torch.no_grad():
        for _ in range(reps):
            for k, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
    return {"kernel": nm.kernel, "active": int((abs_a > t).sum()),
            "ms": {k: 1e3 * statistics.median(v) for k, v in times.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=None, help=f"decoder layers (default {FULL_LAYERS} if memory allows, else 4)")
    ap.add_argument("--intermediate", type=int, default=5632, help="FFN width (5632 TinyLlama, 8192 Llama-3.2-1B)")
    ap.add_argument("--sparsity", default="0.5,0.7,0.9")
    ap.add_argument("--modes", default="static,dynamic,predictor")
    ap.add_argument("--tokens", type=int, default=16, help="decode steps timed per run")
    ap.add_argument("--repeats", type=int, default=2, help="paired dense/sparse decode runs per row (averaged)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on the shared 2-core machine a 2-thread matvec stalls on a busy peer)")
    ap.add_argument("--kernel-threads", type=int, default=None,
                    help="experiment: threads of the C sparse kernel (default: as shipped = torch threads)")
    ap.add_argument("--json", default=None, help="also write the full result to this JSON file")
    args = ap.parse_args()

    import torch

    from sparsealign.models.tiny import train_tokenizer
    from sparsealign.sparse.bench import speed as bench

    torch.set_num_threads(args.threads)
    if args.kernel_threads:  # experiment on sparse.kernels' thread count, without touching torch's
        from sparsealign.sparse.runtime import kernels

        kernels._threads = lambda rows: args.kernel_threads
    layers = args.layers or (FULL_LAYERS if mem_available_gb() > 14 else 4)
    t0 = time.perf_counter()
    model = bench.build_preset("1b-relu", num_layers=layers, intermediate_size=args.intermediate)
    texts = bench.local_texts()
    tok = train_tokenizer(texts, 512)
    print(f"1B-shaped ReLU Llama: {layers} layers, hidden 2048, FFN {args.intermediate}, fp32, batch 1, "
          f"{args.threads} threads (C kernel: {args.kernel_threads or 'same'}); built in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    res = bench.bench_decode(
        model, tok, texts[:4], texts[-1][:200], sparsities=[float(s) for s in args.sparsity.split(",")],
        modes=args.modes.split(","), tokens=args.tokens, repeats=args.repeats, calib_tokens=1024,
        extrapolate_layers=FULL_LAYERS if layers < FULL_LAYERS else None, log=lambda m: print(m, file=sys.stderr))
    res.update(layers=layers, intermediate_size=args.intermediate, kernel_threads=args.kernel_threads, wall_s=time.perf_counter() - t0)
    rows = res["results"]
    extra = layers < FULL_LAYERS
    print(f"\n{'mode':>9} {'sparsity':>8} {'dense tok/s':>11} {'sparse tok/s':>12} {'speedup':>7} {'ideal':>6}"
          f" {'%ideal':>6} {'dense %roof':>11} {'sparse %roof':>12} {'ovh ms d/s':>11} {'FFN x':>6} {'FFN ideal':>9}"
          f" {'KL':>8} {'top-1':>5}" + (f" {'e2e@22':>7} {'ideal@22':>8}" if extra else ""))
    for r in rows:
        line = (f"{r['mode']:>9} {r['sparsity']:>8.2f} {r['dense_tokens_per_s']:>11.2f} {r['sparse_tokens_per_s']:>12.2f}"
                f" {r['speedup']:>7.2f} {r['ideal_speedup']:>6.2f} {100 * r['fraction_of_ideal']:>5.0f}%"
                f" {100 * r['dense_fraction_of_roofline']:>10.0f}% {100 * r['sparse_fraction_of_roofline']:>11.0f}%"
                f" {r['dense_overhead_ms_per_token']:>5.0f}/{r['sparse_overhead_ms_per_token']:<5.0f}"
                f" {r['ffn_speedup']:>6.2f} {r['ffn_ideal_speedup']:>9.2f} {r['kl_mean']:>8.3f} {r['top1_agreement']:>5.2f}")
        if extra:
            line += f" {r['extrapolated_speedup']:>7.2f} {r['extrapolated_ideal_speedup']:>8.2f}"
        print(line)
    print(f"\nbandwidth {res['bandwidth_gb_per_s']:.1f} GB/s (median of probes "
          f"{', '.join(f'{b:.1f}' for b in res['bandwidth_probes'])})")
    goal = {"predictor": 2.2, "static": 1.8, "dynamic": 1.8}
    for r in (r for r in rows if abs(r["sparsity"] - 0.9) < 1e-9):
        e2e = r["extrapolated_speedup"] if extra else r["speedup"]
        ok = e2e >= goal[r["mode"]] and r["fraction_of_ideal"] >= 0.8
        print(f"at 90% {r['mode']:>9}: end to end {e2e:.2f}x{' (extrapolated to 22 layers)' if extra else ''}, "
              f"{100 * r['fraction_of_ideal']:.0f}% of its {r['ideal_speedup']:.2f}x ideal [goal >= {goal[r['mode']]}x "
              f"and >= 80%: {'met' if ok else 'NOT met'}]; dense at {100 * r['dense_fraction_of_roofline']:.0f}% of "
              f"roofline [goal >= 60%: {'met' if r['dense_fraction_of_roofline'] >= 0.6 else 'NOT met'}]")
    x = bench.mlp_inputs(model, tok(texts[-1][:200], return_tensors="pt").input_ids)[0][-1].contiguous()
    kb = kernel_breakdown(model, x)
    res["kernel_breakdown_90"] = kb
    print(f"\nlayer-0 FFN at 90% sparsity, kernel={kb['kernel']}, {kb['active']} of {args.intermediate} "
          f"neurons active (median ms over 20 calls):")
    for k, v in kb["ms"].items():
        print(f"  {k:<45} {v:8.3f} ms")
    if args.json:
        from sparsealign.io import atomic_write_json

        atomic_write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
