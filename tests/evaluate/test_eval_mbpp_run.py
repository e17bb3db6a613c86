"""MBPP end to end: the dataset's reference solutions through the real CLI and sandbox, and a tiny random model's
generations (pass@1 ~ 0 is expected: the point is a complete, valid records table)."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from conftest import assert_one_line_error
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.evaluate.generation import SamplingConfig, generate
from sparsealign.evaluate.mbpp.evaluator import STATUSES, MbppEvalConfig, evaluate_mbpp
from sparsealign.evaluate.mbpp.run import MbppRunConfig, run_mbpp
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer


@pytest.mark.slow
def test_reference_solutions_through_cli(cli, tmp_path) -> None:
    res = cli("eval", "mbpp", "--solutions", "reference", "--split", "test", "--out", str(tmp_path / "ref.jsonl"),
              "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["total"] == 500 and out["samples"] == 500
    # setup code runs before the solution (records.test_program): task 367's setup builds trees with a Node class
    # that only its reference solution defines -- a dataset defect, reported, not hidden
    assert out["passed"] == 499 and out["failed_task_ids"] == [367] and out["pass@1"] == 0.998
    assert out["pass@1_ci"]["method"] == "wilson" and out["pass@1_ci"]["low"] < 0.998 < out["pass@1_ci"]["high"]
    defects = [d for d in out["dataset_defects"] if d["task_id"] == 367]
    assert defects and all("Node" in d["error"] for d in defects)
    assert {d["task_id"] for d in out["dataset_defects"]} == {367}
    rows = [json.loads(line) for line in (tmp_path / "ref.jsonl").read_text().splitlines()]
    assert len(rows) == 500 and sum(r["status"] == "passed" for r in rows) == 499
    assert all(r["program"].rstrip().endswith(r["program"].rstrip().splitlines()[-1]) for r in rows)


@pytest.mark.slow
def test_reference_failures_are_listed(cli, tmp_path, data_dir) -> None:
    """A broken reference solution shows up in failed_task_ids with its error, never hidden."""
    lines = (data_dir / "mbpp" / "mbpp.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[10:14]]  # tasks 11-14
    rows[1]["code"] = "def wrong(*a):\n    return None\n"
    path = tmp_path / "mbpp-broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    res = cli("eval", "mbpp", "--solutions", "reference", "--data", str(path), "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert (out["passed"], out["total"], out["failed_task_ids"]) == (3, 4, [rows[1]["task_id"]])
    assert out["dataset_defects"][0]["kind"] == "reference_fails" and "NameError" in out["dataset_defects"][0]["error"]


@pytest.fixture(scope="module")
def tiny_coder(tmp_path_factory, data_dir):
    torch.set_num_threads(2)
    tasks = load_mbpp(data_dir / "mbpp" / "mbpp.jsonl")
    model, tok = tiny_model_and_tokenizer([t.code + "\n" + t.text for t in tasks[:300]], vocab_size=512,
                                          max_position_embeddings=2048)
    path = save_pretrained(model, tok, tmp_path_factory.mktemp("coder") / "model")
    return model, tok, path


def _check_records(records, tasks, n) -> None:
    assert len(records) == len(tasks) * n
    assert sorted({r["task_id"] for r in records}) == sorted(t.task_id for t in tasks)
    by_id = {t.task_id: t for t in tasks}
    for r in records:
        assert r["status"] in STATUSES and r["duration_s"] >= 0
        assert r["program"] == by_id[r["task_id"]].test_program(r["solution"])
        assert (r["status"] == "passed") == (r["error"] == "")


@pytest.mark.slow
def test_tiny_model_generation_cli_end_to_end(cli, tiny_coder, tmp_path) -> None:
    _, _, path = tiny_coder
    res = cli("eval", "mbpp", "--model", str(path), "--split", "test", "--limit", "3", "--max-new-tokens", "16",
              "--name", "gen", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["total"] == 3 and out["samples"] == 3 and out["format"] == "lm-eval" and 0 <= out["pass@1"] <= 1
    table = pd.read_parquet(out["records"]).to_dict(orient="records")
    _check_records(table, load_mbpp(split="test")[:3], 1)
    assert all(r["prompt"].startswith("You are an expert Python programmer") for r in table)
    assert all(r["prompt"].endswith("[BEGIN]\n") and "[DONE]" not in r["completion"] for r in table)


def test_zero_shot_lm_eval_prompt_is_the_bare_query(cli, tiny_coder) -> None:
    from sparsealign.data.mbpp.prompts import lm_eval_query

    model, tok, _ = tiny_coder
    tasks = load_mbpp(split="test")[:2]
    cfg = MbppEvalConfig(shots=0, sampling=SamplingConfig(max_new_tokens=4))
    _, records = evaluate_mbpp(model, tok, tasks, cfg)
    assert [r["prompt"] for r in records] == [lm_eval_query(t) for t in tasks]
    _, three = evaluate_mbpp(model, tok, tasks[:1], MbppEvalConfig(sampling=SamplingConfig(max_new_tokens=4)))
    assert three[0]["prompt"].count("[BEGIN]") == 4 and three[0]["prompt"].endswith(lm_eval_query(tasks[0]))


@pytest.mark.slow
def test_sampling_bigcode_and_chunk_resume(tiny_coder, tmp_path, monkeypatch) -> None:
    model, tok, path = tiny_coder
    tasks = load_mbpp(split="test")[:2]
    cfg = MbppEvalConfig(format="bigcode", ks=[1, 2],
                         sampling=SamplingConfig(n=2, temperature=1.0, max_new_tokens=8, batch_size=2, seed=3))
    summary, records = evaluate_mbpp(model, tok, tasks, cfg)
    _check_records(records, tasks, 2)
    assert {"pass@1", "pass@2"} <= set(summary) and summary["n"] == 2
    assert all(r["solution"].startswith('"""\n') for r in records)
    again, records2 = evaluate_mbpp(model, tok, tasks, cfg)  # seeded: the same samples
    assert [r["completion"] for r in records2] == [r["completion"] for r in records]

    # resume: a chunk finished before an interruption is read back, not regenerated
    monkeypatch.setenv("SPARSEALIGN_RUNS_DIR", str(tmp_path / "runs"))
    run_cfg = MbppRunConfig(model=str(path), limit=3, chunk_size=2,
                            eval=MbppEvalConfig(sampling=SamplingConfig(max_new_tokens=8)))
    parts = tmp_path / "runs" / "resume" / "eval" / "mbpp" / "parts"
    parts.mkdir(parents=True)
    done = [{"task_id": t.task_id, "sample": 0, "format": "lm-eval", "prompt": "p", "completion": "FROM-PART",
             "solution": "", "program": "", "status": "failed", "reason": "r", "error": "e", "duration_s": 0.0,
             "prompt_truncated": False} for t in load_mbpp(split="test")[:2]]
    (parts / "part-0000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done), encoding="utf-8")
    summary = run_mbpp(run_cfg, name="resume")
    table = pd.read_parquet(summary["records"])
    assert list(table["completion"][:2]) == ["FROM-PART", "FROM-PART"] and table["completion"][2] != "FROM-PART"
    assert (parts / "part-0001.jsonl").exists() and summary["total"] == 3
    assert run_mbpp(run_cfg, name="resume") == summary  # the finished ledger cell is reused, not recomputed


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "exactly one of --model"),
        (("--model", "m", "--n", "2"), "temperature > 0"),
        (("--model", "m", "--k", "5"), "pass@5 needs at least 5 samples"),
        (("--solutions", "reference", "--data", "nope.jsonl"), "nope.jsonl"),
    ],
)
def test_bad_arguments_are_one_line_errors(cli, args, needle) -> None:
    assert_one_line_error(cli("eval", "mbpp", *args, "--json"), needle)


def test_verb_defaults_are_the_sampling_defaults_and_lm_evals_token_budget() -> None:
    """`eval mbpp` at its defaults decodes what lm-eval's mbpp does (max_gen_toks: the task sets none) and what the
    Python API does (512 tokens and batches of 8 made the verb ~40x slower per task than the study, issue 23)."""
    from lm_eval.models.huggingface import HFLM

    from sparsealign.evaluate.mbpp.cli import mbpp_command

    flags = {p.name: p.default for p in mbpp_command.params}
    defaults = SamplingConfig()
    assert flags["max_new_tokens"] == defaults.max_new_tokens == HFLM.max_gen_toks.fget(None) == 256
    assert flags["batch_size"] == defaults.batch_size == MbppRunConfig().eval.sampling.batch_size


def test_left_padded_batch_generates_what_each_prompt_generates_alone(tiny_coder) -> None:
    model, tok, _ = tiny_coder
    peaky = copy.deepcopy(model)
    with torch.no_grad():  # sharpen the random model so greedy decoding does not repeat one token
        for p in peaky.parameters():
            p.mul_(8)
    prompts = ["def f(x):\n    return", "import heapq as hq\ndef heap_queue_largest(nums,n):\r\n  return"]
    cfg = SamplingConfig(max_new_tokens=12, batch_size=2)
    batched = [g[0].completion_ids for g in generate(peaky, tok, prompts, cfg)]
    alone = [generate(peaky, tok, [p], cfg)[0][0].completion_ids for p in prompts]
    assert batched == alone and len(set(batched[0])) > 1
