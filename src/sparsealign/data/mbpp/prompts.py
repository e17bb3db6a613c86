"""MBPP prompt formats: how a task becomes a prompt, where generation stops, and how a completion becomes code.

lm-eval    lm-evaluation-harness `mbpp` (the default): 3-shot with tasks 2, 3, 4 as examples.  Each shot is
           "You are an expert Python programmer, and here is your task: {text} Your code should pass these
           tests:\\n\\n{t1}\\n{t2}\\n{t3}\\n[BEGIN]\\n" followed by "{code}\\n[DONE]"; shots and the query are joined
           by "\\n\\n" and the query ends after "[BEGIN]\\n".  Generation stops at "[DONE]".  The examples' code
           is kept byte-exact (with its "\\r\\n" line ends), as the harness does.
bigcode    bigcode-evaluation-harness `mbpp` (InCoder style), zero-shot: the prompt is the docstring
           '\"\"\"\\n{text}\\n{first test}\\n\"\"\"\\n'; generation stops at a new top-level class, assert, docstring,
           print, if or a markdown fence; the program is prompt + completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sparsealign.data.records import MbppTask

LM_EVAL_SHOT_IDS = (2, 3, 4)
LM_EVAL_STOPS = ("[DONE]",)
# bigcode's stop words, plus "\nif __name__" implied by "\nif" and a run of blank lines after the function
BIGCODE_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```")
FORMATS = ("lm-eval", "bigcode")


def lm_eval_query(task: MbppTask) -> str:
    tests = "\n".join(task.test_list[:3])
    return (
        f"You are an expert Python programmer, and here is your task: {task.text} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n"
    )


def lm_eval_prompt(task: MbppTask, shots: Sequence[MbppTask]) -> str:
    examples = [lm_eval_query(shot) + f"{shot.code}\n[DONE]" for shot in shots]
    return "\n\n".join([*examples, lm_eval_query(task)])


def bigcode_prompt(task: MbppTask) -> str:
    return f'"""\n{task.text}\n{task.test_list[0]}\n"""\n'


@dataclass(frozen=True)
class PromptFormat:
    """A named prompt format with the few-shot examples it needs already resolved."""

    name: str
    shots: tuple[MbppTask, ...] = ()

    @property
    def stop_sequences(self) -> tuple[str, ...]:
        return LM_EVAL_STOPS if self.name == "lm-eval" else BIGCODE_STOPS

    def prompt(self, task: MbppTask) -> str:
        return lm_eval_prompt(task, self.shots) if self.name == "lm-eval" else bigcode_prompt(task)

    def solution(self, task: MbppTask, code: str) -> str:
        """The solution that goes into the test program: bigcode keeps its docstring prompt in front."""
        return bigcode_prompt(task) + code if self.name == "bigcode" else code


def make_format(name: str, all_tasks: Sequence[MbppTask] | None = None) -> PromptFormat:
    """Resolve a format; lm-eval needs tasks 2, 3, 4 (the MBPP "prompt" split) from `all_tasks`."""
    if name not in FORMATS:
        raise ValueError(f"unknown MBPP prompt format {name!r}; choose one of {', '.join(FORMATS)}")
    if name == "bigcode":
        return PromptFormat(name)
    by_id = {t.task_id: t for t in all_tasks or ()}
    missing = [i for i in LM_EVAL_SHOT_IDS if i not in by_id]
    if missing:
        raise ValueError(f"lm-eval format needs MBPP tasks {LM_EVAL_SHOT_IDS} as examples; missing {missing}")
    return PromptFormat(name, tuple(by_id[i] for i in LM_EVAL_SHOT_IDS))
