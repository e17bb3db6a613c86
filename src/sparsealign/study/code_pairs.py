"""Code preference pairs from execution feedback, with execution-grounded rationales (no LLM, no annotator).

For each sampled task (MBPP train/validation + generated training tasks — never the MBPP test split), the base
model writes `code_pair_samples` solutions; each runs against the task's tests in the sandbox.  A passing sample is
chosen over a failing one; when no sample passes, the dataset's reference solution is the chosen response (marked
`meta.chosen_source = "reference"`).  The rationale states which asserts each side passed and how the other failed
(`sparsealign.align.execution_rationales`).
"""

from __future__ import annotations

import random
from typing import Any

from sparsealign.align.execution_rationales import execution_generator
from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.prompts import lm_eval_query
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.records import MbppTask, PreferencePair
from sparsealign.evaluate.generation import SamplingConfig, generate
from sparsealign.evaluate.mbpp.extract import extract_code
from sparsealign.models.loading import load_model
from sparsealign.sandbox.pool import SandboxPool
from sparsealign.study.config import StudyConfig

STOP = ("[DONE]",)


def code_tasks(n: int, seed: int) -> list[MbppTask]:
    """Half MBPP train/validation, half generated training tasks (deterministic by seed)."""
    mbpp = load_mbpp(split="train") + load_mbpp(split="validation")
    random.Random(seed).shuffle(mbpp)
    n_gen = n // 2
    return mbpp[: n - n_gen] + generated_split("train", n_gen)


def build_code_pairs(model_path: str, cfg: StudyConfig) -> tuple[list[PreferencePair], dict[str, Any]]:
    a, ev = cfg.alignment, cfg.evaluation
    tasks = code_tasks(a.code_pair_tasks, cfg.seed)
    model, tok = load_model(model_path, cfg.load)
    prompts = [lm_eval_query(t) for t in tasks]
    sampling = SamplingConfig(n=a.code_pair_samples, temperature=0.8, top_p=0.95,
                              max_new_tokens=ev.max_new_tokens, batch_size=8, seed=cfg.seed)
    generations = generate(model, tok, prompts, sampling, stop=STOP)
    codes = [[extract_code(g.text, STOP) for g in gens] for gens in generations]
    programs = [task.test_program(code) for task, cs in zip(tasks, codes, strict=True) for code in cs]
    pairs: list[PreferencePair] = []
    stats = {"code_tasks": len(tasks), "code_samples": len(programs), "samples_passed": 0,
             "pairs_model_chosen": 0, "pairs_reference_chosen": 0}
    with SandboxPool(workers=ev.sandbox_workers, timeout_s=5.0, memory_mb=512) as pool:
        results = pool.map(programs)
        k = 0
        for task, prompt, cs in zip(tasks, prompts, codes, strict=True):
            passed, failed = [], []
            for code in cs:
                (passed if results[k].status == "passed" else failed).append(code)
                k += 1
            stats["samples_passed"] += len(passed)
            if not failed:
                continue
            chosen, origin = (passed[0], "model") if passed else (_clean(task.code), "reference")
            stats[f"pairs_{origin}_chosen"] += 1
            pairs.append(PreferencePair(
                id=f"code:{task.source}:{task.task_id}", prompt=prompt, chosen=chosen, rejected=failed[0],
                source=f"execution-feedback:{task.source}",
                meta={"task_id": task.task_id, "test_list": task.test_list, "test_setup_code": task.test_setup_code,
                      "test_imports": task.test_imports, "chosen_source": origin},
            ))
        generator = execution_generator(pool)

        def on_done(i: int, text: str) -> None:
            pairs[i].rationale = text

        generator(pairs, on_done)
    for pair in pairs:  # the responses end the way the model was pretrained to end a solution
        pair.chosen, pair.rejected = f"{pair.chosen}\n[DONE]", f"{pair.rejected}\n[DONE]"
    return pairs, stats


def _clean(code: str) -> str:
    return code.replace("\r\n", "\n").replace("\t", "    ").strip()
