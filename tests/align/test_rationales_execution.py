"""Execution-grounded rationales on real MBPP tasks: reference solution vs a broken one, run in the real sandbox."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from conftest import assert_one_line_error
from sparsealign.align.execution_rationales import exception_of, instrument_assert
from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.data.records import PreferencePair


def _tasks(data_dir: Path) -> dict[int, dict]:
    rows = (json.loads(line) for line in (data_dir / "mbpp" / "mbpp.jsonl").read_text().splitlines())
    return {r["task_id"]: r for r in rows}


def _tested_function(task: dict) -> ast.FunctionDef:
    called = task["test_list"][0].split("(")[0].replace("assert", "").strip()
    return next(n for n in ast.walk(ast.parse(task["code"])) if isinstance(n, ast.FunctionDef) and n.name == called)


def _pair(task: dict, rejected: str) -> PreferencePair:
    return PreferencePair(
        id=f"mbpp-{task['task_id']}", prompt=task["text"], chosen=task["code"], rejected=rejected, source="mbpp",
        meta={"task_id": task["task_id"], "test_list": task["test_list"], "test_setup_code": task["test_setup_code"]},
    )


def test_execution_rationales_name_failing_asserts(cli, tmp_path: Path, data_dir: Path):
    tasks = _tasks(data_dir)
    wrong = tasks[11]["code"].replace("return s", "return s[::-1]")  # wrong value on 2 of 3 asserts
    fn = _tested_function(tasks[12])
    raises = f"def {fn.name}({ast.unparse(fn.args)}):\n    raise ValueError('not implemented')\n"
    fn14 = _tested_function(tasks[14])
    hangs = f"def {fn14.name}({ast.unparse(fn14.args)}):\n    while True:\n        pass\n"
    data = tmp_path / "code_pairs.jsonl"
    write_pairs_jsonl([_pair(tasks[11], wrong), _pair(tasks[12], raises), _pair(tasks[14], hangs)], data)
    out = tmp_path / "out.jsonl"
    args = ("rationales", "generate", "--data", str(data), "--out", str(out), "--source", "execution",
            "--test-timeout", "1", "--json")
    res = cli(*args)
    assert res.returncode == 0, res.stderr
    assert res.json()["generated"] == 3
    by_id = {p.id: p for p in load_pairs(out).pairs}

    r11 = by_id["mbpp-11"].rationale
    assert r11.startswith("The preferred solution passes all 3 tests. The other solution passes 1 of 3 tests")
    assert "`assert remove_Occ(\"hello\",\"l\") == \"heo\"` fails: it returns 'oeh' where 'heo' is expected" in r11
    assert "it passes `assert remove_Occ(\"PHP\",\"P\") == \"H\"`" in r11

    r12 = by_id["mbpp-12"].rationale
    assert "The other solution fails all 3 tests: every test raises ValueError: not implemented." in r12
    outcomes = by_id["mbpp-12"].meta["rationale_execution"]
    assert [o["status"] for o in outcomes["chosen"]] == ["passed"] * 3
    assert [o["test"] for o in outcomes["rejected"]] == tasks[12]["test_list"]

    r14 = by_id["mbpp-14"].rationale
    assert r14.count("times out") == len(tasks[14]["test_list"]), r14

    # resume: everything is done, nothing runs again
    again = cli(*args)
    assert again.returncode == 0 and again.json()["generated"] == 0 and again.json()["reused"] == 3


def test_code_pair_without_tests_is_one_line_error(cli, tmp_path: Path, data_dir: Path):
    task = _tasks(data_dir)[11]
    pair = _pair(task, "def remove_Occ(s, ch):\n    return s\n")
    pair.meta = {"task_id": 11}
    data = tmp_path / "no_tests.jsonl"
    write_pairs_jsonl([pair], data)
    res = cli("rationales", "generate", "--data", str(data), "--out", str(tmp_path / "o.jsonl"),
              "--source", "execution")
    assert_one_line_error(res, "mbpp-11", "meta.test_list")


def test_instrument_assert_and_exception_parsing():
    src, expected = instrument_assert("assert f(1, 2) == [3, 4]")
    assert expected == "[3, 4]" and "__sa_actual = (f(1, 2))" in src and src.rstrip().endswith("== ([3, 4])")
    assert instrument_assert("assert math.isclose(f(1), 2.0)") == ("assert math.isclose(f(1), 2.0)", None)
    assert instrument_assert("assert a < b == c")[1] is None  # chained comparison left as is
    tb = 'Traceback (most recent call last):\n  File "x.py", line 3\nZeroDivisionError: division by zero\n'
    assert exception_of(tb) == "ZeroDivisionError: division by zero"
    assert exception_of("nothing here") is None
