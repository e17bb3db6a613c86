"""The normalised records every stage consumes.

A `PreferencePair` is one human (or AI) preference: the same prompt, a chosen and a rejected response, optionally a
rationale explaining why chosen is better, and optional scalar scores (UltraFeedback carries them).  An `MbppTask` is
one MBPP problem with its tests and setup code kept byte-exact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class PreferencePair:
    id: str
    prompt: str  # plain-text prompt (for HH: the transcript up to and including the last "\n\nAssistant:")
    chosen: str  # response text only
    rejected: str
    messages: list[Message] | None = None  # the prompt as chat messages, when the source has turns
    rationale: str | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> PreferencePair:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclass
class MbppTask:
    task_id: int
    text: str  # the natural-language task (sanitized MBPP calls it `prompt`)
    code: str  # reference solution
    test_list: list[str]
    test_setup_code: str = ""
    test_imports: list[str] = field(default_factory=list)
    challenge_test_list: list[str] = field(default_factory=list)
    source: str = "mbpp"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def test_program(self, solution: str) -> str:
        """The program the sandbox runs: imports, setup code, the candidate solution, then the asserts.

        Setup code runs first, as its name says and as MBPP's own execution did.  Two tasks' setup code (367 in the
        test split, 927 in train) builds trees with a `Node` class that only the reference solution defines: a
        dataset defect, which `eval mbpp --solutions reference` reports (499/500 on the test split) rather than
        hides by reordering the program around it."""
        parts = [*self.test_imports, self.test_setup_code, solution, *self.test_list]
        return "\n".join(p for p in parts if p) + "\n"


MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}


def mbpp_split_of(task_id: int) -> str:
    for name, (lo, hi) in MBPP_SPLITS.items():
        if lo <= task_id <= hi:
            return name
    return "other"
