"""The alignment search behind the real preset's settings (issue 21, item 1; docs/study.md, "Alignment search").

Not a speed benchmark: the record of how `--preset real`'s alignment settings were chosen, so it can be re-run.  The
held-out HH pairs the study reports on are split off exactly as its pairs cell does (`split_pairs`, the preset's seed
and `heldout_pairs`) and never touched here; what is left is split again into a dev set (`--dev` pairs, seed 1) and a
training pool.  Each spec `method:lr:rank:epochs:pairs[:beta]` aligns SmolLM2-135M-Instruct (LoRA of that rank; rank
0 = full fine-tune) on the first `pairs` pool pairs with the study's align settings (`align_config`, the preset's
precision), then reports on the dev pairs: the implicit-reward accuracy beta*log(pi/pi_base) (Wilson CI), its mean
margin, the longer-response-wins baseline on the same pairs (on the scored and on the whole responses), and
KL(aligned || base) per token on the chosen responses of the first `--kl-pairs` dev pairs (the study's check) and on
the first `--tasks` MBPP test references (the cost on code).  `--pass` adds dense MBPP pass@1 on those tasks, paired against the base (McNemar).
The manipulation check the study needs (issue 21): KL >= 0.02, dev accuracy above 0.5 and above the length baseline
with the CI excluding both, pass@1 within 2 points.  One JSON line per spec, appended to <out>/results.jsonl.

    .venv/bin/python benchmarks/real_align_tuning.py dpo:5e-4:16:1:600 [--dev 300] [--tasks 100] [--pass]
        [--out /tmp/real-align-tuning]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sparsealign.align.engine import run_align
from sparsealign.align.logps import TokenizeSettings, encode_pairs, score_pairs
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.data.splits import split_pairs
from sparsealign.evaluate.mbpp.likelihood import code_likelihood, score_parts
from sparsealign.evaluate.preference.metrics import length_metrics
from sparsealign.ledger import Ledger
from sparsealign.models.loading import load_model
from sparsealign.rundir import RunDir
from sparsealign.stats.intervals import bootstrap_ci, wilson_interval
from sparsealign.stats.paired import paired_difference
from sparsealign.study.config import align_config, load_study_config
from sparsealign.study.evaluation import longer_wins


def splits(cfg, dev: int) -> tuple[list, list, list]:
    """(pool, dev, held-out): held-out as the study's pairs cell takes it; dev from the rest."""
    a = cfg.alignment
    hh = load_pairs(a.preference_data, warn=False).pairs
    rest, held = split_pairs(hh, eval_fraction=min(0.5, a.heldout_pairs / len(hh)), seed=cfg.seed)
    pool, dev_pairs = split_pairs(rest, eval_fraction=dev / len(rest), seed=cfg.seed + 1)
    return pool, dev_pairs[:dev], held[: a.heldout_pairs]


def lora_modules(top: int, layers: int = 30) -> str:
    """LoRA targets: every linear projection, in the top `top` decoder layers only (a peft regex) when `top` > 0."""
    if not top:
        return "all-linear"
    ids = "|".join(str(i) for i in range(layers - top, layers))
    return rf".*layers\.({ids})\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"


def pass_items(cfg, model, tok, tasks) -> np.ndarray:
    from sparsealign.evaluate.generation import SamplingConfig
    from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig
    from sparsealign.evaluate.mbpp.run import MbppRunConfig, evaluate_loaded

    ev = cfg.evaluation
    run_cfg = MbppRunConfig(split=ev.mbpp_split, limit=len(tasks), chunk_size=len(tasks),
                            eval=MbppEvalConfig(format=ev.prompt_format, shots=ev.shots, workers=ev.sandbox_workers,
                                                ci_resamples=0, sampling=SamplingConfig(
                                                    max_new_tokens=ev.max_new_tokens,
                                                    batch_size=ev.generation_batch_size)))
    _, records = evaluate_loaded(run_cfg, model, tok, tasks)
    return np.array([r["status"] == "passed" for r in records], dtype=float)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("specs", nargs="+", help="method:lr:rank:epochs:pairs[:beta]")
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--pass", dest="pass_at_1", action="store_true")
    ap.add_argument("--kl-pairs", type=int, default=200, help="dev pairs whose chosen responses KL is read on")
    ap.add_argument("--out", default="/tmp/real-align-tuning")
    ap.add_argument("--top-layers", type=int, default=0,
                    help="LoRA on the top N decoder layers only (0: all): backward stops below them")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="study config override")
    args = ap.parse_args()
    cfg = load_study_config(None, "real", args.overrides)
    torch.set_num_threads(cfg.threads or 2)
    root = Path(args.out)
    model_id = next(iter(cfg.family.models.values()))
    pool, dev, _ = splits(cfg, args.dev)
    ev = cfg.evaluation
    st = TokenizeSettings(max_length=ev.max_length, max_prompt_length=ev.max_prompt_length)
    tasks = load_mbpp(split=ev.mbpp_split)[: args.tasks]
    base, tok = load_model(model_id, cfg.load)
    t0 = time.perf_counter()
    base_scores = score_pairs(base, tok, dev, st, batch_size=8)
    base_delta = (base_scores["chosen_logps"] - base_scores["rejected_logps"]).numpy()
    print(f"base: {len(dev)} dev pairs scored in {time.perf_counter() - t0:.0f} s", flush=True)
    length = length_metrics(np.zeros(len(dev)), base_scores["chosen_n"].numpy().astype(float),
                            base_scores["rejected_n"].numpy().astype(float))["length_baseline_accuracy"]
    full_length = longer_wins(tok, dev)  # on the whole responses, as the study's check reads it
    base_pass = pass_items(cfg, base, tok, tasks) if args.pass_at_1 else None
    for spec in args.specs:
        method, lr, rank, epochs, n_pairs, *beta = spec.split(":")
        name = f"{method}-lr{float(lr):g}-r{rank}-e{float(epochs):g}-n{n_pairs}" + (f"-b{beta[0]}" if beta else "") + (
            f"-top{args.top_layers}" if args.top_layers else "")
        data = root / "pairs" / f"train_{n_pairs}.jsonl"
        if not data.exists():
            write_pairs_jsonl(pool[: int(n_pairs)], data)
        c = align_config(cfg, method, model=model_id, data=str(data), cell=name)
        update = {"lr": float(lr), "epochs": float(epochs), "lora": {"r": int(rank), "alpha": 2 * int(rank),
                                                                     "target_modules": lora_modules(args.top_layers)}
                  if int(rank) else None}
        if beta:
            update["beta"] = float(beta[0])
        c = c.model_validate({**c.model_dump(by_alias=True), **update})
        run = RunDir(root=root / "runs", ledger=Ledger(root / "runs" / "ledger.sqlite"))
        t0 = time.perf_counter()
        try:
            metrics = run_align(c, run, pairs=pool[: int(n_pairs)], eval_pairs=[])
        finally:
            run.close()
        t_align = time.perf_counter() - t0
        model, _ = load_model(str(root / "runs" / "align" / name / "model"), cfg.load)
        sc = score_pairs(model, tok, dev, st, batch_size=8)
        b = c.beta if c.beta is not None else 0.1
        margin = b * ((sc["chosen_logps"] - sc["rejected_logps"]).numpy() - base_delta)
        k = int((margin > 0).sum())
        ci = wilson_interval(k, len(dev))
        kl = code_likelihood(model, tok, tasks, kl_to={"kl": base}, n_resamples=200)["kl"].summary
        feats = encode_pairs(tok, dev[: args.kl_pairs], st)[0]
        sums, counts = score_parts(model, [(f["prompt_ids"], f["chosen_ids"]) for f in feats], tok.pad_token_id or 0,
                                   kl_to={"kl": base})["kl"]
        hh_kl = bootstrap_ci(sums / counts, n_resamples=1000, seed=0)
        row = {"spec": spec, "name": name, "n_train": int(n_pairs), "beta": b, "align_s": round(t_align, 1),
               "train_loss": metrics.get("train_loss"), "dev_pairs": len(dev),
               "dev_implicit_accuracy": {"estimate": k / len(dev), "low": ci.low, "high": ci.high},
               "dev_mean_margin": float(margin.mean()), "dev_length_baseline": length,
               "kl_aligned_base": {"estimate": kl["estimate"], "low": kl["low"], "high": kl["high"],
                                   "tasks": len(tasks)},
               "dev_hh_kl_aligned_base": {"estimate": hh_kl.estimate, "low": hh_kl.low, "high": hh_kl.high,
                                          "pairs": len(feats)},
               "dev_full_length_baseline": float(full_length.mean())}
        if base_pass is not None:
            p = pass_items(cfg, model, tok, tasks)
            d = paired_difference(p, base_pass, n_resamples=2000, seed=0)
            row["pass@1"] = {"base": float(base_pass.mean()), "aligned": float(p.mean()),
                             "diff": {"estimate": d.estimate, "low": d.low, "high": d.high, "p": d.p}}
        print(json.dumps(row), flush=True)
        with (root / "results.jsonl").open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
