"""Benchmark (issue 21, item 6): does SmolLM2-135M-Instruct give the same answers in bf16 as in fp32?

The real preset may load every cell in bf16 (`--set load.dtype=bfloat16`: this CPU has native bf16 matmuls) only if
the measurements it makes agree with fp32's.  On the real preset's own settings (lm-eval 3-shot MBPP prompt, greedy,
its token budgets; the study's shared reward on held-out HH pairs) this script loads the model twice through the
study's loader and reports, fp32 vs bf16:

- MBPP: pass@1 of each on the first N test tasks, the paired difference (exact McNemar), identical programs;
- reference NLL per task on the same tasks (paired difference, bootstrap CI) and KL(fp32 || bf16) per token there;
- held-out HH pairs (the study's seeded split): accuracy of each, the paired difference (McNemar), how many pairs
  the two rank differently (flip rate, Wilson CI), and the margins' correlation.

    .venv/bin/python benchmarks/real_precision_agreement.py [--tasks 100] [--pairs 200] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _ci(values: np.ndarray) -> dict:
    from sparsealign.stats.intervals import bootstrap_ci

    c = bootstrap_ci(values, n_resamples=2000, seed=0)
    return {"estimate": c.estimate, "low": c.low, "high": c.high, "n": int(values.size)}


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    from sparsealign.stats.paired import paired_difference

    d = paired_difference(a, b, n_resamples=2000, seed=0)
    return {"estimate": d.estimate, "low": d.low, "high": d.high, "n": d.n, "p": d.p, "test": d.test}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=100, help="the first N MBPP test tasks")
    ap.add_argument("--pairs", type=int, default=200, help="held-out HH pairs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    from sparsealign.data.mbpp.tasks import load_mbpp
    from sparsealign.data.preference import load_pairs
    from sparsealign.data.splits import split_pairs
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig
    from sparsealign.evaluate.mbpp.likelihood import code_likelihood
    from sparsealign.evaluate.mbpp.run import MbppRunConfig, evaluate_loaded
    from sparsealign.evaluate.preference.reward import SHARED_REWARD
    from sparsealign.evaluate.preference.run import PreferenceRunConfig
    from sparsealign.evaluate.preference.run import evaluate_loaded as score_pairs
    from sparsealign.models.loading import load_model
    from sparsealign.stats.intervals import wilson_interval
    from sparsealign.study.config import load_study_config

    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    cfg = load_study_config(None, "real")
    ev, spec = cfg.evaluation, next(iter(cfg.family.models.values()))
    tasks = load_mbpp(split=ev.mbpp_split)[: args.tasks]
    run_cfg = MbppRunConfig(split=ev.mbpp_split, limit=len(tasks), chunk_size=len(tasks),
                            eval=MbppEvalConfig(format=ev.prompt_format, shots=ev.shots, workers=ev.sandbox_workers,
                                                ci_resamples=ev.bootstrap,
                                                sampling=SamplingConfig(max_new_tokens=ev.max_new_tokens,
                                                                        batch_size=ev.generation_batch_size)))
    hh = load_pairs(cfg.alignment.preference_data, warn=False).pairs
    held = split_pairs(hh, eval_fraction=min(0.5, args.pairs / len(hh)), seed=cfg.seed)[1][: args.pairs]
    pref_cfg = PreferenceRunConfig(model=spec, method=SHARED_REWARD.method, beta=SHARED_REWARD.beta, data="hh",
                                   max_length=ev.max_length, max_prompt_length=ev.max_prompt_length,
                                   n_resamples=200)

    models, out = {}, {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_model(spec, cfg.load.model_copy(update={"dtype": dtype}))
        models[dtype] = model
        t0 = time.perf_counter()
        _, records = evaluate_loaded(run_cfg, model, tok, tasks)
        t_mbpp = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, pairs = score_pairs(pref_cfg, model, tok, held)
        t_pairs = time.perf_counter() - t0
        out[dtype] = {"passed": np.array([r["status"] == "passed" for r in records], dtype=float),
                      "program": [r["completion"] for r in records],
                      "margin": np.array([r["margin"] for r in pairs]),
                      "correct": np.array([r["correct"] for r in pairs], dtype=float),
                      "s_mbpp": t_mbpp, "s_pairs": t_pairs}
        log(f"{dtype}: MBPP {len(tasks)} tasks {t_mbpp:.0f} s, pass@1 {out[dtype]['passed'].mean():.3f}; "
            f"HH {len(held)} pairs {t_pairs:.0f} s, accuracy {out[dtype]['correct'].mean():.3f}")
    t0 = time.perf_counter()
    like = code_likelihood(models["float32"], tok, tasks, kl_to={"kl_fp32_bf16": models["bfloat16"]})
    nll_bf16 = code_likelihood(models["bfloat16"], tok, tasks)["reference_nll"]
    log(f"likelihood + KL: {time.perf_counter() - t0:.0f} s")
    f32, b16 = out["float32"], out["bfloat16"]
    flips = int(((f32["margin"] > 0) != (b16["margin"] > 0)).sum())
    fl = wilson_interval(flips, len(held))
    result = {
        "model": spec, "tasks": len(tasks), "pairs": len(held), "threads": torch.get_num_threads(),
        "mbpp_pass@1": {"float32": float(f32["passed"].mean()), "bfloat16": float(b16["passed"].mean()),
                        "bf16_minus_fp32": _paired(b16["passed"], f32["passed"]),
                        "identical_programs": int(sum(a == b for a, b in zip(f32["program"], b16["program"],
                                                                             strict=True)))},
        "reference_nll": {"float32": float(like["reference_nll"].values.mean()),
                          "bfloat16": float(nll_bf16.values.mean()),
                          "bf16_minus_fp32": _paired(nll_bf16.values, like["reference_nll"].values)},
        "kl_fp32_bf16_per_token": _ci(like["kl_fp32_bf16"].values),
        "hh_accuracy": {"float32": float(f32["correct"].mean()), "bfloat16": float(b16["correct"].mean()),
                        "bf16_minus_fp32": _paired(b16["correct"], f32["correct"])},
        "hh_flip_rate": {"estimate": flips / len(held), "low": fl.low, "high": fl.high, "n": len(held)},
        "hh_margin_correlation": float(np.corrcoef(f32["margin"], b16["margin"])[0, 1]),
        "seconds": {d: {"mbpp": round(out[d]["s_mbpp"], 1), "pairs": round(out[d]["s_pairs"], 1)} for d in out},
    }
    if args.json:
        print(json.dumps(result))
        return
    m, n, a = result["mbpp_pass@1"], result["reference_nll"], result["hh_accuracy"]
    k, f = result["kl_fp32_bf16_per_token"], result["hh_flip_rate"]

    def diff(d: dict) -> str:
        return f"{d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}], p {d['p']:.3g} ({d['test']})"

    print("| measure | fp32 | bf16 | bf16 - fp32 (95% CI) |\n| --- | --- | --- | --- |")
    print(f"| MBPP pass@1, {len(tasks)} tasks | {m['float32']:.3f} | {m['bfloat16']:.3f} | {diff(m['bf16_minus_fp32'])}"
          f"; identical programs {m['identical_programs']}/{len(tasks)} |")
    print(f"| reference NLL, nats/token | {n['float32']:.4f} | {n['bfloat16']:.4f} | {diff(n['bf16_minus_fp32'])} |")
    print(f"| HH accuracy (shared reward), {len(held)} pairs | {a['float32']:.3f} | {a['bfloat16']:.3f} | "
          f"{diff(a['bf16_minus_fp32'])} |")
    print(f"| HH pairs ranked differently | | | {f['estimate']:.3f} [{f['low']:.3f}, {f['high']:.3f}]; margin "
          f"correlation {result['hh_margin_correlation']:.4f} |")
    print(f"| KL(fp32 ‖ bf16) per token on the references | | | {k['estimate']:.5f} [{k['low']:.5f}, {k['high']:.5f}] |")
    print(f"time: {json.dumps(result['seconds'])}")


if __name__ == "__main__":
    main()
