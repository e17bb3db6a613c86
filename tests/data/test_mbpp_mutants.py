"""Held-out code pairs from reference vs near-miss mutant: model-free, reproducible, executed for real."""

from __future__ import annotations

from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.mutants import mutant_pairs, mutants
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.sandbox.pool import SandboxPool


def test_mutants_are_one_edit_and_seeded():
    code = "def f(a, b):\n    return max(a + b, 2)\n"
    ref, muts = mutants(code, "0:mbpp:1", limit=10)
    assert ref == "def f(a, b):\n    return max(a + b, 2)"
    assert set(muts) == {"def f(a, b):\n    return min(a + b, 2)", "def f(a, b):\n    return max(a - b, 2)",
                         "def f(a, b):\n    return max(a + b, 3)"}
    assert mutants(code, "0:mbpp:1", limit=10) == (ref, muts)  # same key, same order
    assert mutants("def f(:\n", "k") == ("", [])


def test_pairs_are_identical_across_calls_and_really_pass_and_fail(data_dir):
    tasks = load_mbpp(split="test")[:16] + generated_split("test", 10)
    with SandboxPool(workers=2, timeout_s=5.0, memory_mb=512) as pool:
        first, stats = mutant_pairs(tasks, pool, seed=0)
        second, _ = mutant_pairs(tasks, pool, seed=0)
        assert [p.to_dict() for p in first] == [p.to_dict() for p in second]
        assert stats["pairs"] == len(first) >= 18
        by_id = {f"code:{t.source}:{t.task_id}": t for t in tasks}
        programs = [by_id[p.id].test_program(side.removesuffix("\n[DONE]"))
                    for p in first for side in (p.chosen, p.rejected)]
        results = pool.map(programs)
    assert [r.passed for r in results] == [True, False] * len(first)
    assert {p.source for p in first} == {"mutant:mbpp", "mutant:generated"}
