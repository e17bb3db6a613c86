"""Harness-compatible extraction (the default) vs lenient, and `eval mbpp --samples` on hand-made lm-eval
--log_samples and evalplus sample files built from the dataset's own reference solutions (real sandbox)."""

from __future__ import annotations

import json

import pytest

from conftest import assert_one_line_error
from sparsealign.data.mbpp.prompts import make_format
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig, completion_record, run_records
from sparsealign.evaluate.mbpp.extract import extract, harness_code

TASK_11 = ("def remove_Occ(s,ch): \n    for i in range(len(s)): \n        if (s[i] == ch): \n"
           "            s = s[0 : i] + s[i + 1:] \n            break\n    for i in range(len(s) - 1,-1,-1):  \n"
           "        if (s[i] == ch): \n            s = s[0 : i] + s[i + 1:] \n            break\n    return s \n")


@pytest.fixture(scope="module")
def tasks(data_dir):
    return load_mbpp(data_dir / "mbpp" / "mbpp.jsonl")


def test_harness_code_is_the_completion_cut_at_the_stop() -> None:
    text = "def f():\n    return 1\nprint(f())\n[DONE]\n\nYou are"
    assert harness_code(text, ("[DONE]",)) == "def f():\n    return 1\nprint(f())\n"
    assert extract(text, ("[DONE]",), "lenient") == "def f():\n    return 1\n"
    with pytest.raises(ValueError, match="unknown extraction"):
        extract(text, (), "strict")


@pytest.mark.parametrize("fmt_name", ["lm-eval", "bigcode"])
def test_task_11_broken_helper_fails_by_default_and_passes_lenient(tasks, fmt_name) -> None:
    task = next(t for t in tasks if t.task_id == 11)
    fmt = make_format(fmt_name, tasks)
    completion = TASK_11 + "def helper(:\n    pass\n" + ("[DONE]" if fmt_name == "lm-eval" else "")
    out = {}
    for how in ("harness", "lenient"):
        cfg = MbppEvalConfig(format=fmt_name, extract=how, workers=1)
        summary, records = run_records([completion_record(task, 0, completion, fmt, cfg)], cfg)
        out[how] = records[0]["status"]
        assert summary["extract"] == how
    assert out == {"harness": "failed", "lenient": "passed"}


def _lm_eval_rows(tasks) -> list[dict]:
    """What `lm_eval --tasks mbpp --log_samples` writes per doc (a model that answers with the reference code)."""
    return [{"doc_id": i, "doc": {"task_id": t.task_id, "text": t.text, "code": t.code, "test_list": t.test_list},
             "target": "\n".join(t.test_list), "arguments": {"gen_args_0": {"arg_0": "...", "arg_1": {}}},
             "resps": [[t.code + "\n"]], "filtered_resps": [t.code + "\n"], "filter": "none",
             "metrics": ["pass_at_1"], "pass_at_1": 1.0} for i, t in enumerate(tasks)]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.mark.slow
def test_samples_lm_eval_and_evalplus_reference_solutions(cli, tasks, tmp_path) -> None:
    test = [t for t in tasks if 360 <= t.task_id < 380]  # includes 367, whose setup code needs the reference's Node
    lm = _write(tmp_path / "samples_mbpp.jsonl", _lm_eval_rows(test))
    res = cli("eval", "mbpp", "--samples", lm, "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert (out["total"], out["passed"], out["failed_task_ids"]) == (20, 19, [367])
    assert out["samples_format"] == "lm-eval" and out["format"] == "lm-eval" and out["extract"] == "harness"

    plus = [{"task_id": f"Mbpp/{t.task_id}", "solution": t.code} for t in test]
    # two "completion" samples of one task: appended to the docstring prompt, pass@k over n=2
    plus += [{"task_id": "Mbpp/370", "completion": test[10].code}]
    res = cli("eval", "mbpp", "--samples", _write(tmp_path / "evalplus.jsonl", plus), "--out",
              str(tmp_path / "rec.jsonl"), "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["samples_format"] == "evalplus" and (out["total"], out["samples"], out["passed"]) == (20, 21, 19)
    recs = [json.loads(line) for line in (tmp_path / "rec.jsonl").read_text().splitlines()]
    second = [r for r in recs if r["task_id"] == 370 and r["sample"] == 1]
    assert second and second[0]["solution"].startswith('"""\n') and second[0]["status"] == "passed"


@pytest.mark.slow
def test_samples_errors_name_line_and_field(cli, tasks, tmp_path) -> None:
    rows = [{"task_id": "Mbpp/11", "solution": TASK_11}, {"task_id": "Mbpp/9999", "solution": "x = 1"}]
    assert_one_line_error(cli("eval", "mbpp", "--samples", _write(tmp_path / "a.jsonl", rows)),
                          "a.jsonl:2", "task id 9999 is not in the MBPP data")
    rows = [{"task_id": "HumanEval/1", "solution": "x"}]
    assert_one_line_error(cli("eval", "mbpp", "--samples", _write(tmp_path / "b.jsonl", rows)),
                          "b.jsonl:1", "'task_id' is not an MBPP task id")
    rows = [{"question": "q", "answer": "a"}]
    assert_one_line_error(cli("eval", "mbpp", "--samples", _write(tmp_path / "c.jsonl", rows)),
                          "c.jsonl:1", "not an MBPP sample")
    rows = [*_lm_eval_rows(tasks[10:11]), {"task_id": "Mbpp/11", "solution": TASK_11}]
    assert_one_line_error(cli("eval", "mbpp", "--samples", _write(tmp_path / "d.jsonl", rows)),
                          "d.jsonl:2", "evalplus record in a file of lm-eval records")
    assert_one_line_error(cli("eval", "mbpp", "--samples", "x.jsonl", "--model", "m"), "exactly one of")
