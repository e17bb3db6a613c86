"""What CPU users pick instead: llama.cpp (through llama-cpp-python) decoding the same SmolLM2 GGUF, side by side
with our fp32 dense and TEAL-sparse decoders, each against its own roofline, in one run.

    pip install -e '.[bench]'    # llama-cpp-python: pip builds llama.cpp from source (minutes on 2 cores)
    .venv/bin/python benchmarks/vs_llamacpp.py [--threads 2] [--tokens 32] [--repeats 3] [--sparsity 0.5]

llama.cpp runs the GGUF as shipped (Q4_1 weights, ~4.5 bits per weight, f16 K/V cache); ours runs the same weights
dequantised to fp32 (8x the bytes).  Each engine decodes greedily from the same MBPP prompt; rounds alternate
engine by engine (llama.cpp, ours dense, ours sparse), so a busy neighbour hits all of them.  Roofline of each:
bandwidth (measured in-process) / bytes it must read per token — llama.cpp: every GGUF tensor's bytes (the tied
token embedding doubles as lm_head, so it is read whole) + its f16 K/V; ours: `sparse.bench.roofline` accounting.
No speed goal this round (issue 13): the figures tell users where we stand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from teal_decode import load, smollm2_gguf


def gguf_step_bytes(path: Path, pos: int, n_layers: int, kv_dim: int) -> float:
    """Bytes llama.cpp reads per decode step: all tensors (token_embd only as one row unless it is also the
    output matrix) + the f16 K and V up to `pos`."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:  # untied: the embedding table is only indexed
        total -= tensors["token_embd.weight"]
    return float(total + n_layers * 2 * kv_dim * 2 * (pos + 1))


def llamacpp_decode(llm, prompt_ids: list[int], tokens: int) -> tuple[float, list[int]]:
    """Seconds per decode step (prefill untimed), greedy ids."""
    llm.reset()
    llm.eval(prompt_ids)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out = [nxt]
    start = time.perf_counter()
    for _ in range(tokens):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
    return (time.perf_counter() - start) / tokens, out


def ours_decode(model, ops, prompt, tokens: int) -> tuple[float, float, list[int]]:
    """Seconds per step, bytes per step, greedy ids of our static-KV decoder with `ops`."""
    from sparsealign.sparse.runtime.decode import Decoder

    dec = Decoder(model, ops, max_len=prompt.numel() + tokens + 1)
    nxt = int(dec.prefill(prompt).argmax())
    dec.reset_counters()
    out = [nxt]
    start = time.perf_counter()
    for _ in range(tokens):
        nxt = int(dec.step(nxt).argmax())
        out.append(nxt)
    return (time.perf_counter() - start) / tokens, dec.bytes_read / tokens, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.5, help="TEAL sparsity of our sparse row (all sites)")
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit("llama-cpp-python is not installed: pip install -e '.[bench]'")
    import torch

    from sparsealign.sparse.bench.roofline import measure_bandwidth
    from sparsealign.sparse.bench.teal import TealOps, calibrate_teal
    from sparsealign.sparse.runtime.decode import DenseOps

    torch.set_num_threads(args.threads)
    d, f = smollm2_gguf()
    model, tok = load("smollm2", args.data_dir)
    mbpp = [json.loads(line) for line in (args.data_dir / "mbpp" / "mbpp.jsonl").open()]
    prompt_text = f"# {mbpp[10]['text']}\n"
    prompt = tok(prompt_text, return_tensors="pt")["input_ids"][0]
    th = calibrate_teal(model, tok, [p["code"] for p in mbpp if p["task_id"] >= 601][:64], args.sparsity)
    llm = Llama(model_path=str(d / f), n_threads=args.threads, n_threads_batch=args.threads, n_ctx=512,
                logits_all=True, verbose=False)
    cfg = model.config
    kv_dim = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    engines = {"llama.cpp Q4_1": None, "ours fp32 dense": DenseOps(model),
               f"ours fp32 TEAL {args.sparsity:.0%}": TealOps(model, th)}
    secs: dict[str, list[float]] = {k: [] for k in engines}
    nbytes: dict[str, float] = {}
    ids: dict[str, list[int]] = {}
    bws = []
    for rnd in range(args.repeats + 1):  # round 0 warms up
        bws.append(measure_bandwidth(args.threads)["gb_per_s"])
        for name, ops in engines.items():
            if ops is None:
                s, ids[name] = llamacpp_decode(llm, prompt.tolist(), args.tokens)
                nbytes[name] = gguf_step_bytes(d / f, prompt.numel() + args.tokens // 2, cfg.num_hidden_layers, kv_dim)
            else:
                s, nbytes[name], ids[name] = ours_decode(model, ops, prompt, args.tokens)
            if rnd:
                secs[name].append(s)
    bw = statistics.median(bws[1:])
    rows = []
    print(f"SmolLM2-135M-Instruct, batch 1, {args.threads} threads, {args.tokens} tokens x {args.repeats} rounds; "
          f"read bandwidth {bw:.1f} GB/s (probes {', '.join(f'{b:.1f}' for b in bws)})\n")
    print(f"{'engine':<22} {'tok/s':>7} {'MB/token':>9} {'roofline tok/s':>14} {'% of roofline':>13}")
    for name in engines:
        tps = 1.0 / statistics.mean(secs[name])
        roof = bw * 1e9 / nbytes[name]
        rows.append({"engine": name, "tokens_per_s": tps, "mb_per_token": nbytes[name] / 1e6,
                     "roofline_tokens_per_s": roof, "fraction_of_roofline": tps / roof,
                     "runs_tokens_per_s": [1.0 / s for s in secs[name]]})
        print(f"{name:<22} {tps:>7.1f} {nbytes[name] / 1e6:>9.1f} {roof:>14.1f} {100 * tps / roof:>12.0f}%")
    same = sum(a == b for a, b in zip(ids["llama.cpp Q4_1"], ids["ours fp32 dense"], strict=False))
    print(f"\ngreedy tokens identical to llama.cpp's for {same}/{args.tokens + 1} steps (ours dense)")
    if args.json:
        from sparsealign.io import atomic_write_json

        atomic_write_json(args.json, {"threads": args.threads, "tokens": args.tokens, "bandwidth_gb_per_s": bw,
                                      "bandwidth_probes": bws, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
