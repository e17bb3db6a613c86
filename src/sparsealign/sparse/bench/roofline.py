"""Roofline accounting for batch-1 decode: what the memory bus allows, and how close each decoder gets.

At batch 1 every weight read per token is used for one multiply-add, so decode is bound by bytes read, not FLOPs:
    roofline tokens/s = sustained read bandwidth / bytes read per decode step.
- bandwidth: measured in this process (a streaming sum over a buffer larger than the last-level cache, with 1 and
  with the decode's thread count, the better of the two), before every decode step pair of `paired_decode`, so the
  roofline sees the shared machine as the decoders saw it; the median of those probes is used.
- bytes per step: dense = every weight matrix of every layer + norms + the K/V cache up to the position + lm_head +
  one embedding row (`step_bytes`, the hand formula); sparse = the same outside the FFN, plus what the active sets
  touched in it (counted by the kernels themselves: int8 pre-check rows, exact gate rows, up and down rows, the
  predictor's weights).
- overhead: measured time per token minus bytes / bandwidth, i.e. what is not weight traffic (Python dispatch,
  attention arithmetic, threads waking up); reported in ms per token for each side.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from sparsealign.sparse.metrics import kl_per_token
from sparsealign.sparse.runtime import kernels
from sparsealign.sparse.runtime.decode import Decoder, DenseOps

PROBE_MB = 256
INLOOP_PROBE_MB = 64  # twice the last-level cache of the machine measured here; ~10 ms a probe


def step_bytes(*, hidden: int, inter: int, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
               pos: int) -> float:
    """fp32 bytes one dense decode step at position `pos` (0-based) reads: the hand formula."""
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o and k, v
    per_layer = attn + 3 * hidden * inter + 2 * hidden + 2 * kv_heads * head_dim * (pos + 1)
    return 4.0 * (layers * per_layer + vocab * hidden + 2 * hidden)


def measure_bandwidth(threads: int, *, mb: int = PROBE_MB, repeats: int = 5) -> dict[str, Any]:
    """Sustained read bandwidth in GB/s (median of `repeats` streaming sums per thread count; best count wins)."""
    buf = torch.ones(mb * 2**20 // 4)
    lib = kernels.load()
    by_threads = {}
    for n in sorted({1, max(1, threads)}):
        runs = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            if lib is not None:
                kernels.stream_sum(lib, buf, n)
            else:
                before = torch.get_num_threads()
                torch.set_num_threads(n)
                buf.sum()
                torch.set_num_threads(before)
            runs.append(buf.numel() * 4 / (time.perf_counter() - start) / 1e9)
        by_threads[n] = statistics.median(runs[1:])  # the first pass pages the buffer in
    return {"gb_per_s": max(by_threads.values()), "by_threads": by_threads, "probe_mb": mb}


@torch.no_grad()
def paired_decode(model, sparse_ops, prompt: torch.Tensor, tokens: int) -> dict[str, Any]:
    """Dense and sparse decoders side by side, alternating every step, each with its own static KV cache.

    The sparse side is fed the dense side's greedy tokens (teacher-forced on the dense trajectory), so the work per
    step is the same as free decoding while KL(dense || sparse) and top-1 agreement of every step are measurable.
    Returns per-token seconds, FFN seconds and bytes for each side, and the quality figures."""
    max_len = prompt.numel() + tokens + 1
    sides = {"dense": Decoder(model, DenseOps(model), max_len), "sparse": Decoder(model, sparse_ops, max_len)}
    logits = {k: d.prefill(prompt.reshape(-1)) for k, d in sides.items()}
    nxt = int(logits["dense"].argmax())
    for d in sides.values():
        d.reset_counters()
    totals, kls, agree = dict.fromkeys(sides, 0.0), [], 0
    buf, probes = torch.ones(INLOOP_PROBE_MB * 2**18), []
    for _ in range(tokens):
        probes.append(_probe(buf))
        for side, dec in sides.items():
            start = time.perf_counter()
            logits[side] = dec.step(nxt)
            int(logits[side].argmax())  # the host needs the token before the next step, as in real decoding
            totals[side] += time.perf_counter() - start
        kls.append(float(kl_per_token(logits["dense"], logits["sparse"])))
        agree += int(logits["dense"].argmax() == logits["sparse"].argmax())
        nxt = int(logits["dense"].argmax())
    out: dict[str, Any] = {side: {"total": totals[side] / tokens, "ffn": d.ffn_seconds / tokens,
                                  "layers": d.layer_seconds / tokens, "bytes": d.bytes_read / tokens,
                                  "ffn_bytes": d.ops.mlp_bytes / tokens} for side, d in sides.items()}
    out.update(kl=sum(kls) / tokens, top1=agree / tokens, bandwidth_probes=probes)
    return out


def _probe(buf: torch.Tensor) -> float:
    """GB/s of one streaming read of `buf` (1 thread and torch's count, the better), between decode steps, so
    the roofline sees the machine as the decoders saw it."""
    lib = kernels.load()
    best = 0.0
    for n in sorted({1, torch.get_num_threads()}):
        start = time.perf_counter()
        if lib is not None:
            kernels.stream_sum(lib, buf, n)
        else:
            buf.sum()
        best = max(best, buf.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


def roofline_fields(d: dict[str, float], s: dict[str, float], gb_per_s: float) -> dict[str, float]:
    """Row fields from per-token seconds/bytes of the dense (d) and sparse (s) side and the bandwidth (pure)."""
    bw = gb_per_s * 1e9
    out = {"bandwidth_gb_per_s": gb_per_s, "dense_mb_per_token": d["bytes"] / 1e6,
           "sparse_mb_per_token": s["bytes"] / 1e6, "ideal_speedup": d["bytes"] / s["bytes"]}
    for side, v in (("dense", d), ("sparse", s)):
        roof = bw / v["bytes"]
        out[f"{side}_roofline_tokens_per_s"] = roof
        out[f"{side}_fraction_of_roofline"] = (1.0 / v["total"]) / roof
        out[f"{side}_overhead_ms_per_token"] = 1e3 * (v["total"] - v["bytes"] / bw)
    out["fraction_of_ideal"] = (d["total"] / s["total"]) / out["ideal_speedup"]
    return out
