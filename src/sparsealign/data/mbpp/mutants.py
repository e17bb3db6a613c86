"""Held-out code preference pairs that are the same for every model: the reference solution vs a near-miss mutant.

A study compares sizes on the same items, so its held-out code pairs cannot come from each model's own samples
(those differ per model, and a model that passes every sample yields no pair).  Here the chosen side is the task's
reference solution and the rejected side is a one-edit mutant of it (mutation-testing operators: an arithmetic or
comparison operator swapped, a boolean operator or constant flipped, an integer constant off by one, a builtin or
method swapped for its opposite: max/min, sum/len, upper/lower, ...) that FAILS the task's
tests in the sandbox.  Both sides are printed by `ast.unparse`, so formatting cannot tell them apart.  The mutant
tried first is chosen by a seeded order per task; no model is involved, so every size gets the identical pairs.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Sequence
from typing import Any

from sparsealign.data.mbpp.prompts import lm_eval_query
from sparsealign.data.records import MbppTask, PreferencePair

_SWAP: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.And: ast.Or, ast.Or: ast.And,
}
_RENAME = {"max": "min", "min": "max", "sum": "len", "len": "sum", "any": "all", "all": "any", "upper": "lower",
           "lower": "upper", "append": "remove", "sorted": "reversed", "True": "False", "False": "True"}


def _mutable(node: ast.AST) -> bool:
    if isinstance(node, (ast.BinOp, ast.BoolOp)):
        return type(node.op) in _SWAP
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, bool)
    return node.id in _RENAME if isinstance(node, ast.Name) else isinstance(node, ast.Attribute) and \
        node.attr in _RENAME


def _sites(tree: ast.AST) -> list[tuple[int, int]]:
    """(node index in ast.walk order, operand index) of every mutable spot."""
    sites = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare):
            sites += [(i, j) for j, op in enumerate(node.ops) if type(op) in _SWAP]
        elif _mutable(node):
            sites.append((i, -1))
    return sites


def _mutate(source: str, site: tuple[int, int]) -> str:
    tree = ast.parse(source)
    node = list(ast.walk(tree))[site[0]]
    if isinstance(node, ast.Compare):
        node.ops[site[1]] = _SWAP[type(node.ops[site[1]])]()
    elif isinstance(node, ast.Constant):
        node.value = (not node.value) if type(node.value) is bool else node.value + 1
    elif isinstance(node, ast.Name):
        node.id = _RENAME[node.id]
    elif isinstance(node, ast.Attribute):
        node.attr = _RENAME[node.attr]
    else:
        node.op = _SWAP[type(node.op)]()
    return ast.unparse(tree)


def mutants(code: str, key: str, limit: int = 4) -> tuple[str, list[str]]:
    """(canonical reference, up to `limit` distinct mutants in a seeded order); ("", []) if the code does not parse."""
    try:
        tree = ast.parse(code.replace("\r\n", "\n").replace("\t", "    "))
    except SyntaxError:
        return "", []
    canonical = ast.unparse(tree)
    sites = _sites(tree)
    random.Random(key).shuffle(sites)
    out: list[str] = []
    for site in sites:
        m = _mutate(canonical, site)
        if m != canonical and m not in out:
            out.append(m)
        if len(out) == limit:
            break
    return canonical, out


def mutant_pairs(tasks: Sequence[MbppTask], pool: Any, *, seed: int = 0, limit: int = 4,
                 suffix: str = "\n[DONE]") -> tuple[list[PreferencePair], dict[str, int]]:
    """One (reference, first failing mutant) pair per task whose reference passes and some mutant fails.

    `pool` is a started `SandboxPool`; every program runs there.  Mutants are tried in rounds (the k-th mutant of
    every task still without a failing one), so most tasks cost two programs: the reference and one mutant."""
    plans = {i: (task, *mutants(task.code, f"{seed}:{task.source}:{task.task_id}", limit))
             for i, task in enumerate(tasks)}
    stats = {"mutant_tasks": len(tasks), "unparsable": sum(not ref for _, ref, _ in plans.values()),
             "reference_failed": 0, "no_failing_mutant": 0}
    live = [i for i, (_, ref, _) in plans.items() if ref]
    ok = pool.map([plans[i][0].test_program(plans[i][1]) for i in live])
    stats["reference_failed"] = sum(not r.passed for r in ok)
    live = [i for i, r in zip(live, ok, strict=True) if r.passed]
    rejected: dict[int, str] = {}
    for k in range(limit):
        todo = [i for i in live if i not in rejected and k < len(plans[i][2])]
        results = pool.map([plans[i][0].test_program(plans[i][2][k]) for i in todo])
        rejected.update({i: plans[i][2][k] for i, r in zip(todo, results, strict=True) if not r.passed})
    stats["no_failing_mutant"] = len(live) - len(rejected)
    pairs = []
    for i in sorted(rejected):
        task, ref, _ = plans[i]
        pairs.append(PreferencePair(
            id=f"code:{task.source}:{task.task_id}", prompt=lm_eval_query(task), chosen=ref + suffix,
            rejected=rejected[i] + suffix, source=f"mutant:{task.source}",
            meta={"task_id": task.task_id, "chosen_source": "reference", "rejected_source": "mutant"},
        ))
    stats["pairs"] = len(pairs)
    return pairs, stats
