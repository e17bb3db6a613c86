"""Generated MBPP-format tasks: every reference solution passes its asserts in the sandbox; seeded and leak-free."""

from __future__ import annotations

import pytest

from sparsealign.data.mbpp.generated import (
    DATASET_NAME,
    FAMILY_NAMES,
    GENERATED_ID_BASE,
    generate_tasks,
    generated_split,
)
from sparsealign.data.records import MbppTask, mbpp_split_of


def test_reference_solutions_pass_and_wrong_ones_fail_in_the_sandbox():
    from sparsealign.sandbox.pool import SandboxPool

    tasks = generated_split("test", 2 * len(FAMILY_NAMES)) + generated_split("train", len(FAMILY_NAMES))
    # another family's solution under this task's function name must fail: the asserts really test the function
    wrong = []
    for i, t in enumerate(tasks[: len(FAMILY_NAMES)]):
        other = tasks[(i + 1) % len(FAMILY_NAMES)]
        wrong.append(t.test_program(other.code.replace(f"def {_fn(other)}(", f"def {_fn(t)}(")))
    with SandboxPool(workers=2, timeout_s=10.0) as pool:
        good = pool.map([t.test_program(t.code) for t in tasks])
        bad = pool.map(wrong)
    assert [r.status for r in good] == ["passed"] * len(tasks), [(t.task_id, r.reason) for t, r in zip(tasks, good, strict=True)]
    assert sum(r.passed for r in bad) <= 2  # e.g. max_of_two vs another max-like family may coincide by chance


def _fn(task: MbppTask) -> str:
    return task.code.split("(")[0].removeprefix("def ")


def test_format_ids_and_every_family_covered():
    tasks = generated_split("test", 3 * len(FAMILY_NAMES))
    assert [t.task_id for t in tasks] == list(range(GENERATED_ID_BASE, GENERATED_ID_BASE + len(tasks)))
    assert all(mbpp_split_of(t.task_id) == "other" for t in tasks)  # never in MBPP's id range
    for t in tasks:
        assert t.source == DATASET_NAME == "generated"
        assert len(t.test_list) == len(set(t.test_list)) == 3
        assert all(line.startswith(f"assert {_fn(t)}(") for line in t.test_list)
        assert t.text.startswith("Write a ") and t.text.endswith(".")
    # each round of len(FAMILY_NAMES) tasks covers every family once
    assert sorted(_fn(t) for t in tasks[: len(FAMILY_NAMES)]) == sorted(FAMILY_NAMES)


def test_deterministic_by_seed():
    a, b, c = generate_tasks(60, seed=5), generate_tasks(60, seed=5), generate_tasks(60, seed=6)
    assert [t.to_dict() for t in a] == [t.to_dict() for t in b]
    assert [t.test_list for t in a] != [t.test_list for t in c]


def test_train_split_never_repeats_a_held_out_assert():
    test_asserts = {line for t in generated_split("test", 200) for line in t.test_list}
    train = generated_split("train", 3000)
    assert not test_asserts & {line for t in train for line in t.test_list}
    assert {t.task_id for t in train}.isdisjoint(t.task_id for t in generated_split("test", 200))


def test_unknown_family_and_split_are_errors():
    with pytest.raises(ValueError, match="unknown task families"):
        generate_tasks(3, families=["add_numbers", "fly"])
    with pytest.raises(ValueError, match="unknown generated split"):
        generated_split("validation", 3)
    assert {_fn(t) for t in generate_tasks(10, families=["square", "cube"])} == {"square", "cube"}
