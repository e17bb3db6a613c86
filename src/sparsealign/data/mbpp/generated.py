"""Seeded generator of small programming tasks in MBPP format (`MbppTask`, `source="generated"`).

MBPP is far beyond what a 100K-parameter model can solve, so the embedded micro study also evaluates on these: a few
dozen task *families* (add two numbers, reverse a string, max of a list, ...) whose instances differ in the random
arguments of their three asserts.  A micro model that has seen the family during pretraining can solve unseen
instances, which makes pass@1 informative (above zero) for tiny models.  Results on these tasks are always reported
under the dataset name ``"generated"``, never mixed into MBPP numbers.

Task ids live in their own range (``GENERATED_ID_BASE`` = 100000 and up), far from MBPP's 1..974.  The ``"test"``
split is held out from the ``"train"`` split (used in pretraining): no train task repeats a test assert.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sparsealign.data.records import MbppTask

GENERATED_ID_BASE = 100_000
DATASET_NAME = "generated"
# Seeds and id offsets of the two splits: the study evaluates on "test"; pretraining uses "train".
SPLITS: dict[str, tuple[int, int]] = {"test": (1_000_003, GENERATED_ID_BASE), "train": (7, GENERATED_ID_BASE + 50_000)}

Args = tuple


@dataclass(frozen=True)
class Family:
    """One kind of task: its function name, phrasings, reference solution and argument sampler."""

    name: str  # also the function name the asserts call
    texts: tuple[str, ...]  # alternative phrasings of the task
    code: str  # reference solution
    ref: Callable[..., object]  # the same function in Python, to compute expected values
    sample: Callable[[random.Random], Args]


def _int(rng: random.Random, lo: int = -20, hi: int = 50) -> int:
    return rng.randint(lo, hi)


def _ints(rng: random.Random, k: int | None = None) -> list[int]:
    return [rng.randint(-9, 30) for _ in range(k or rng.randint(3, 6))]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8)))


def _fam(name: str, texts: Sequence[str], body: str, params: str, ref: Callable, sample: Callable) -> Family:
    code = f"def {name}({params}):\n    return {body}"
    return Family(name, tuple(texts), code, ref, sample)


FAMILIES: tuple[Family, ...] = (
    _fam("add_numbers", ["Write a function to add two numbers.", "Write a python function to find the sum of two "
         "integers."], "a + b", "a, b", lambda a, b: a + b, lambda r: (_int(r), _int(r))),
    _fam("subtract_numbers", ["Write a function to subtract the second number from the first."], "a - b", "a, b",
         lambda a, b: a - b, lambda r: (_int(r), _int(r))),
    _fam("multiply_numbers", ["Write a function to multiply two numbers.", "Write a python function to find the "
         "product of two integers."], "a * b", "a, b", lambda a, b: a * b, lambda r: (_int(r, -9, 12), _int(r, -9, 12))),
    _fam("square", ["Write a function to find the square of a number."], "n * n", "n", lambda n: n * n,
         lambda r: (_int(r),)),
    _fam("cube", ["Write a function to find the cube of a number."], "n * n * n", "n", lambda n: n * n * n,
         lambda r: (_int(r, -9, 12),)),
    _fam("is_even", ["Write a python function to check whether a number is even.", "Write a function to check if "
         "the given integer is even."], "n % 2 == 0", "n", lambda n: n % 2 == 0, lambda r: (_int(r, 0, 99),)),
    _fam("is_odd", ["Write a python function to check whether a number is odd."], "n % 2 == 1", "n",
         lambda n: n % 2 == 1, lambda r: (_int(r, 0, 99),)),
    _fam("absolute_value", ["Write a function to find the absolute value of a number."], "abs(n)", "n", abs,
         lambda r: (_int(r, -50, 50),)),
    _fam("max_of_two", ["Write a function to find the maximum of two numbers."], "max(a, b)", "a, b", max,
         lambda r: (_int(r), _int(r))),
    _fam("min_of_two", ["Write a function to find the minimum of two numbers."], "min(a, b)", "a, b", min,
         lambda r: (_int(r), _int(r))),
    _fam("reverse_string", ["Write a function to reverse a string.", "Write a python function to reverse the given "
         "string."], "s[::-1]", "s", lambda s: s[::-1], lambda r: (_word(r),)),
    _fam("reverse_list", ["Write a function to reverse a list."], "lst[::-1]", "lst", lambda lst: lst[::-1],
         lambda r: (_ints(r),)),
    _fam("max_of_list", ["Write a function to find the largest number in a list.", "Write a python function to "
         "find the maximum element of a list."], "max(lst)", "lst", max, lambda r: (_ints(r),)),
    _fam("min_of_list", ["Write a function to find the smallest number in a list."], "min(lst)", "lst", min,
         lambda r: (_ints(r),)),
    _fam("sum_of_list", ["Write a function to find the sum of all elements in a list.", "Write a python function "
         "to sum the numbers of a list."], "sum(lst)", "lst", sum, lambda r: (_ints(r),)),
    _fam("list_length", ["Write a function to find the length of a list."], "len(lst)", "lst", len,
         lambda r: (_ints(r),)),
    _fam("count_occurrences", ["Write a function to count the occurrences of an element in a list."],
         "lst.count(x)", "lst, x", lambda lst, x: lst.count(x),
         lambda r: (lambda xs: (xs, r.choice(xs)))([r.randint(0, 4) for _ in range(r.randint(4, 8))])),
    _fam("first_element", ["Write a function to get the first element of a list."], "lst[0]", "lst",
         lambda lst: lst[0], lambda r: (_ints(r),)),
    _fam("last_element", ["Write a function to get the last element of a list."], "lst[-1]", "lst",
         lambda lst: lst[-1], lambda r: (_ints(r),)),
    _fam("double_list", ["Write a function to double every element of a list."], "[x * 2 for x in lst]", "lst",
         lambda lst: [x * 2 for x in lst], lambda r: (_ints(r),)),
    _fam("sort_list", ["Write a function to sort a list in ascending order."], "sorted(lst)", "lst", sorted,
         lambda r: (_ints(r),)),
    _fam("to_upper", ["Write a function to convert a string to upper case."], "s.upper()", "s",
         lambda s: s.upper(), lambda r: (_word(r),)),
    _fam("to_lower", ["Write a python function to convert the given string to lower case."], "s.lower()", "s",
         lambda s: s.lower(), lambda r: (_word(r).upper(),)),
    _fam("string_length", ["Write a function to find the length of a string."], "len(s)", "s", len,
         lambda r: (_word(r),)),
    _fam("concat_strings", ["Write a function to concatenate two strings."], "a + b", "a, b",
         lambda a, b: a + b, lambda r: (_word(r), _word(r))),
    _fam("count_char", ["Write a python function to count the occurrences of a character in a string."],
         "s.count(c)", "s, c", lambda s, c: s.count(c), lambda r: (lambda w: (w, r.choice(w)))(_word(r))),
)
FAMILY_NAMES = tuple(f.name for f in FAMILIES)


def _assert_line(family: Family, args: Args) -> str:
    call = f"{family.name}({', '.join(repr(a) for a in args)})"
    return f"assert {call} == {family.ref(*args)!r}"


def _make_task(task_id: int, family: Family, rng: random.Random, n_asserts: int, banned: set[str]) -> MbppTask:
    asserts: list[str] = []
    for _ in range(1000):  # distinct asserts, none from the banned (held-out) set
        line = _assert_line(family, family.sample(rng))
        if line not in asserts and line not in banned:
            asserts.append(line)
        if len(asserts) == n_asserts:
            break
    return MbppTask(task_id=task_id, text=rng.choice(family.texts), code=family.code, test_list=asserts,
                    source=DATASET_NAME)


def generate_tasks(
    n: int, *, seed: int = 0, start_id: int = GENERATED_ID_BASE, families: Sequence[str] | None = None,
    n_asserts: int = 3, exclude_asserts: set[str] | None = None,
) -> list[MbppTask]:
    """`n` tasks cycling through the families (in a seeded order) with seeded random arguments.

    Deterministic: the same arguments give the same tasks, independent of hash seeds or platform.
    """
    chosen = [f for f in FAMILIES if families is None or f.name in families]
    if families is not None and len(chosen) != len(set(families)):
        unknown = sorted(set(families) - set(FAMILY_NAMES))
        raise ValueError(f"unknown task families {unknown}; known: {', '.join(FAMILY_NAMES)}")
    rng = random.Random(seed)
    order = list(chosen)
    tasks: list[MbppTask] = []
    for i in range(n):
        if i % len(order) == 0:  # each round visits every family once, in a fresh seeded order
            rng.shuffle(order)
        tasks.append(_make_task(start_id + i, order[i % len(order)], rng, n_asserts, exclude_asserts or set()))
    return tasks


def generated_split(split: str, n: int, *, held_out_n: int = 200) -> list[MbppTask]:
    """The fixed `"test"` (evaluation) or `"train"` (pretraining) split of generated tasks.

    Train tasks never repeat an assert of the first `held_out_n` test tasks, so evaluating on up to that many test
    tasks is free of leakage from pretraining.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown generated split {split!r}; choose one of {sorted(SPLITS)}")
    seed, start = SPLITS[split]
    if split == "test":
        return generate_tasks(n, seed=seed, start_id=start)
    test_seed, test_start = SPLITS["test"]
    held = {line for t in generate_tasks(held_out_n, seed=test_seed, start_id=test_start) for line in t.test_list}
    return generate_tasks(n, seed=seed, start_id=start, exclude_asserts=held)
