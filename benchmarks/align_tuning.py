"""The alignment hyper-parameter search behind the default study's lr (docs/design.md, "Alignment hyper-parameters").

Not a speed benchmark: the record of how the default's alignment settings were chosen, so it can be re-run.  For one
micro size and method, each `lr:beta:epochs` spec aligns the cached base model (`run_align`, the study's align
settings) on the study's training pairs (128 HH + execution-feedback code pairs) and scores it on: dense greedy
generated-task pass@1 (200 leak-free tasks), MBPP reference NLL and KL(aligned || base) (500 tasks), held-out HH
(500) and mutant code (599) accuracy under the shared reward (mean token log-prob) and DPO's implicit reward.
Criterion: pass@1 within 5 points of the base while the implicit-reward accuracy moves.  One JSON line per model,
appended to <out>/results.jsonl.

    .venv/bin/python benchmarks/align_tuning.py micro-m dpo 5e-4:0.1:1 1e-4:0.1:1 [--out=/tmp/align-tuning]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from sparsealign.align.config import AlignConfig
from sparsealign.align.engine import run_align
from sparsealign.align.logps import TokenizeSettings, score_pairs
from sparsealign.config import load_config
from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.mutants import mutant_pairs
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.data.splits import split_pairs
from sparsealign.evaluate.generation import SamplingConfig
from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig, evaluate_mbpp
from sparsealign.evaluate.mbpp.likelihood import reference_kl, reference_nll
from sparsealign.ledger import Ledger
from sparsealign.models.loading import LoadSettings, load_model
from sparsealign.models.micro import get_recipe
from sparsealign.models.pretrain import ensure_family
from sparsealign.rundir import RunDir
from sparsealign.sandbox.pool import SandboxPool
from sparsealign.study.code_pairs import build_code_pairs
from sparsealign.study.config import StudyConfig, preset_path

torch.set_num_threads(1)
args = [a for a in sys.argv[1:] if not a.startswith("--out")]
out_arg = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--out=")]

if len(args) < 3 or "-h" in args or "--help" in args:
    sys.exit(__doc__)
ROOT = Path(out_arg[0] if out_arg else "/tmp/align-tuning")
size, method, grid = args[0], args[1], args[2:]
cfg = load_config(StudyConfig, preset_path("default"))
fam = {m.name: m for m in ensure_family(get_recipe("micro"), log=lambda m: None).members}
base_path = fam[size].path
pdir = ROOT / "pairs" / size
st = TokenizeSettings(max_length=256, max_prompt_length=160)
if not (pdir / "train.jsonl").exists():
    hh = load_pairs("hh-rlhf/helpful-base/test.jsonl.gz", warn=False).pairs
    tr, held = split_pairs(hh, eval_fraction=500 / len(hh), seed=0)
    code, _ = build_code_pairs(base_path, cfg)
    write_pairs_jsonl([*tr[:128], *code], pdir / "train.jsonl")
    write_pairs_jsonl(held[:500], pdir / "held_hh.jsonl")
    if not (ROOT / "held_code.jsonl").exists():
        with SandboxPool(workers=2, timeout_s=5.0, memory_mb=512) as pool:
            mp, _ = mutant_pairs(load_mbpp(split="test") + generated_split("test", 200), pool)
        write_pairs_jsonl(mp, ROOT / "held_code.jsonl")
train = load_pairs(pdir / "train.jsonl", warn=False).pairs
held = {"hh": load_pairs(pdir / "held_hh.jsonl", warn=False).pairs,
        "code": load_pairs(ROOT / "held_code.jsonl", warn=False).pairs}
gen_tasks = generated_split("test", 200)
mbpp = load_mbpp(split="test")
ecfg = MbppEvalConfig(format="lm-eval", shots=0, workers=2, ci_resamples=0,
                      sampling=SamplingConfig(max_new_tokens=48, batch_size=16))


def evaluate(path, ref_model):
    model, tok = load_model(path, LoadSettings())
    s, _ = evaluate_mbpp(model, tok, gen_tasks, ecfg)
    p1 = s["pass@1"]["estimate"] if isinstance(s["pass@1"], dict) else s["pass@1"]
    out = {"gen_pass@1": p1, "nll": reference_nll(model, tok, mbpp, n_resamples=0).summary["estimate"]}
    if ref_model is not None:
        out["kl_vs_base"] = reference_kl(model, ref_model, tok, mbpp, n_resamples=0).summary["estimate"]
    for name, pairs in held.items():
        sc = score_pairs(model, tok, pairs, st, batch_size=16)
        avg = (sc["chosen_logps"] / sc["chosen_n"] - sc["rejected_logps"] / sc["rejected_n"]).numpy()
        out[f"{name}_acc_avglogp"] = float((avg > 0).mean())
        if ref_model is not None:
            rs = score_pairs(ref_model, tok, pairs, st, batch_size=16)
            dpo = ((sc["chosen_logps"] - rs["chosen_logps"]) - (sc["rejected_logps"] - rs["rejected_logps"])).numpy()
            out[f"{name}_acc_dpo_reward"] = float((dpo > 0).mean())
    return out


res_file = ROOT / "results.jsonl"
base_model, _ = load_model(base_path, LoadSettings())
done = [json.loads(line) for line in res_file.open()] if res_file.exists() else []
if not any(r["size"] == size and r["method"] == "base" for r in done):
    t = time.perf_counter()
    r = {"size": size, "method": "base", **evaluate(base_path, None), "eval_s": time.perf_counter() - t}
    print(json.dumps(r), flush=True)
    res_file.open("a").write(json.dumps(r) + "\n")
for spec in grid:
    lr, beta, epochs = (float(x) for x in spec.split(":"))
    name = f"{size}-{method}-lr{lr:g}-b{beta:g}-e{epochs:g}"
    acfg = AlignConfig(method=method, model=base_path, data=str(pdir / "train.jsonl"), seed=0, cell=name,
                       lr=lr, beta=beta, epochs=epochs, batch_size=8, logging_steps=5, save_steps=10000,
                       max_length=256, max_prompt_length=160, rationale_max_length=512,
                       missing_rationales="skip" if method.startswith("r") else "error")
    run = RunDir(root=ROOT / "runs", ledger=Ledger(ROOT / "runs" / "ledger.sqlite"))
    t = time.perf_counter()
    try:
        m = run_align(acfg, run, pairs=train, eval_pairs=[])
    finally:
        run.close()
    t_align = time.perf_counter() - t
    t = time.perf_counter()
    r = {"size": size, "method": method, "lr": lr, "beta": beta, "epochs": epochs, "align_s": t_align,
         **evaluate(ROOT / "runs" / "align" / name / "model", base_model), "eval_s": time.perf_counter() - t}
    print(json.dumps(r), flush=True)
    res_file.open("a").write(json.dumps(r) + "\n")
