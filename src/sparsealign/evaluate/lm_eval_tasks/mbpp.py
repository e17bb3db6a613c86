"""Hooks of the offline lm-eval `mbpp` task (mbpp.yaml): docs from our MBPP loader, scoring in our sandbox.

The program a response is scored by is the one `eval mbpp` runs (`completion_record`: the response as lm-eval cut
it at `[DONE]`, harness extraction, then the task's test program with its imports and setup code), so the task's
pass@1 equals `eval mbpp --samples` of the same log.  Upstream `code_eval` runs the response and the three asserts
only: a task whose asserts need its setup code (367) fails there for every model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sparsealign.data.mbpp.prompts import LM_EVAL_SHOT_IDS, PromptFormat
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.records import MbppTask
from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig, completion_record
from sparsealign.sandbox.pool import run_program

_FIELDS = [f.name for f in dataclasses.fields(MbppTask)]
_SCORING = MbppEvalConfig()  # the verb's extraction and sandbox limits


def _docs(tasks: list[MbppTask]) -> Any:
    import datasets

    return datasets.Dataset.from_list([t.to_dict() for t in tasks])


def load(data: str | None = None, **_: Any) -> dict[str, Any]:
    """The MBPP splits as lm-eval datasets (`custom_dataset`; lm-eval passes the task's metadata as keywords)."""
    return {split: _docs(load_mbpp(data, split=split)) for split in ("test", "prompt")}


def fewshot_samples(data: str | None = None) -> list[dict[str, Any]]:
    """Tasks 2, 3, 4 from the data directory: the examples upstream lists by hand."""
    by_id = {t.task_id: t for t in load_mbpp(data, split="prompt")}
    return [{**by_id[i].to_dict(), "is_fewshot": True} for i in LM_EVAL_SHOT_IDS]


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    task = MbppTask(**{k: doc[k] for k in _FIELDS if doc.get(k) is not None})
    record = completion_record(task, 0, results[0], PromptFormat("lm-eval"), _SCORING)
    result = run_program(record["program"], timeout_s=_SCORING.timeout_s, memory_mb=_SCORING.memory_mb)
    return {"pass_at_1": float(result.status == "passed")}
