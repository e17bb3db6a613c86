"""Pairwise LLM judge end to end against a real OpenAI-compatible server on 127.0.0.1, plus the win-rate maths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from llm_server import POSITION_BIASED, RAMBLING, FakeOpenAI
from sparsealign.data.preference import load_pairs
from sparsealign.evaluate.judges.winrate import combine_orders, letter_probs, parse_verdict, winrate_summary

HH = "hh-rlhf/helpful-base/test.jsonl.gz"
KEY = "sk-judge-31415"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_llm_judge_both_orders_and_inconsistency_is_tie(cli, tmp_path: Path, data_dir: Path):
    pairs = load_pairs(HH, limit=8).pairs
    # candidate = chosen, baseline = rejected, one prompt per pair; two prompts make the fake judge position-biased
    cand, base, expected = [], [], {}
    for i, p in enumerate(pairs):
        prompt = p.prompt + (f" {POSITION_BIASED}" if i in (2, 5) else "")
        cand.append({"id": p.id, "prompt": prompt, "response": p.chosen})
        base.append({"id": p.id, "prompt": prompt, "completion": p.rejected})
        a, b = len(p.chosen.strip()), len(p.rejected.strip())
        expected[p.id] = "tie" if i in (2, 5) or a == b else "win" if a > b else "loss"
    base.reverse()  # matched by id, not by position
    c_path, b_path = _write(tmp_path / "cand.jsonl", cand), _write(tmp_path / "base.jsonl", base)
    out = tmp_path / "verdicts.jsonl"
    with FakeOpenAI(api_key=KEY, fail_plan=[429]) as server:
        res = cli("eval", "winrate", "--judge", "llm", "--model", "fake-judge", "--base-url", server.url,
                  "--api-key-env", "SA_JUDGE_KEY", "--candidate", str(c_path), "--baseline", str(b_path),
                  "--cache", str(tmp_path / "c.sqlite"), "--out", str(out), "--ci", "wilson", "--json",
                  env={"SA_JUDGE_KEY": KEY})
        assert res.returncode == 0, res.stderr
        bodies = list(server.bodies)
    summary = res.json()
    outcomes = list(expected.values())
    wins, ties, losses = (outcomes.count(k) for k in ("win", "tie", "loss"))
    assert (summary["wins"], summary["ties"], summary["losses"], summary["n"]) == (wins, ties, losses, 8)
    assert summary["inconsistent"] == 2 and summary["requests"] == 17  # 16 judgements + one 429 retry
    assert summary["win_rate"] == pytest.approx((wins + ties / 2) / 8)
    assert summary["ci_method"] == "wilson" and summary["ci_low"] < summary["win_rate"] < summary["ci_high"]
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {k: r["outcome"] for k, r in records.items()} == expected
    assert records[pairs[2].id]["verdict_candidate_first"] == "A" == records[pairs[2].id]["verdict_candidate_second"]
    assert not records[pairs[2].id]["consistent"]
    # every item was shown in both orders
    for p in pairs:
        shown = [b["messages"][-1]["content"] for b in bodies if p.chosen.strip() in b["messages"][-1]["content"]]
        firsts = sorted(u.index(p.chosen.strip()) < u.index(p.rejected.strip()) for u in shown)
        assert firsts == [False, True]


def test_winrate_bad_inputs_are_one_line_errors(cli, tmp_path: Path):
    c = _write(tmp_path / "c.jsonl", [{"id": "1", "prompt": "q", "response": "a"}, {"id": "2", "prompt": "q2",
                                                                                     "response": "b"}])
    b = _write(tmp_path / "b.jsonl", [{"id": "1", "prompt": "q", "response": "x"}])
    res = cli("eval", "winrate", "--judge", "llm", "--model", "m", "--candidate", str(c), "--baseline", str(b),
              "--api-key-env", "SA_JUDGE_KEY", env={"SA_JUDGE_KEY": KEY})
    assert_one_line_error(res, "b.jsonl", "'2'")
    bad = _write(tmp_path / "bad.jsonl", [{"id": "1", "prompt": "q", "text": "a"}])
    res = cli("eval", "winrate", "--judge", "llm", "--model", "m", "--candidate", str(bad), "--baseline", str(b))
    assert_one_line_error(res, "bad.jsonl:1", "response")
    res = cli("eval", "winrate", "--judge", "llm", "--model", "m", "--candidate", str(c), "--baseline", str(c),
              "--api-key-env", "SA_ABSENT_KEY")
    assert_one_line_error(res, "SA_ABSENT_KEY")


def test_parse_verdict_and_combine_orders():
    assert parse_verdict("Format: [[A]] or [[B]]. Here B is better.\n[[B]]") == "B"  # the last one counts
    assert parse_verdict("tie: [[ C ]]") == "C" and parse_verdict("A is better") is None
    table = {("A", "B"): "win", ("B", "A"): "loss", ("C", "C"): "tie", ("A", "A"): "tie", ("B", "B"): "tie",
             ("A", "C"): "tie", ("C", "B"): "tie", (None, "B"): "missing", ("A", None): "missing",
             (None, None): "missing"}
    for (v1, v2), outcome in table.items():
        assert combine_orders(v1, v2) == outcome, (v1, v2)


def test_winrate_summary_matches_formulas():
    outcomes = ["win"] * 13 + ["tie"] * 4 + ["loss"] * 7
    s = winrate_summary(outcomes, ci="wilson")
    n, p, z = 24, (13 + 2) / 24, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert s["win_rate"] == pytest.approx(p)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((centre - half, centre + half))
    b = winrate_summary(outcomes, ci="bootstrap", seed=3)
    assert b["win_rate"] == pytest.approx(p) and b["ci_low"] < p < b["ci_high"]
    assert winrate_summary(outcomes, ci="bootstrap", seed=3) == b  # seeded
    assert winrate_summary(["win"] * 5, ci="wilson")["ci_high"] == pytest.approx(1.0)


def _judge_files(tmp_path: Path, n: int, rambling: set[int]) -> tuple[Path, Path, dict[str, str]]:
    pairs = load_pairs(HH, limit=n).pairs
    cand, base, expected = [], [], {}
    for i, p in enumerate(pairs):
        prompt = p.prompt + (f" {RAMBLING}" if i in rambling else "")
        cand.append({"id": p.id, "prompt": prompt, "response": p.chosen})
        base.append({"id": p.id, "prompt": prompt, "response": p.rejected})
        a, b = len(p.chosen.strip()), len(p.rejected.strip())
        expected[p.id] = "missing" if i in rambling else "tie" if a == b else "win" if a > b else "loss"
    return _write(tmp_path / "cand.jsonl", cand), _write(tmp_path / "base.jsonl", base), expected


@pytest.mark.parametrize("verdict", ["text", "logprobs", "json"])
def test_unparsed_verdicts_are_missing_never_ties(cli, tmp_path: Path, verdict: str):
    c_path, b_path, expected = _judge_files(tmp_path, 12, rambling={3})  # 1/12 missing: still usable
    out = tmp_path / "v.jsonl"
    with FakeOpenAI() as server:
        res = cli("eval", "winrate", "--judge", "llm", "--model", "small", "--base-url", server.url,
                  "--api-key-env", "none", "--no-cache", "--candidate", str(c_path), "--baseline", str(b_path),
                  "--verdict", verdict, "--ci", "wilson", "--out", str(out), "--json")
        bodies = list(server.bodies)
    assert res.returncode == 0, res.stderr
    s = res.json()
    judged = [o for o in expected.values() if o != "missing"]
    wins, ties = judged.count("win"), judged.count("tie")
    assert (s["items"], s["missing"], s["n"], s["wins"], s["ties"]) == (12, 1, 11, wins, ties)
    assert s["win_rate"] == pytest.approx((wins + ties / 2) / 11) and s["usable"] and s["verdict"] == verdict
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert {k: r["outcome"] for k, r in records.items()} == expected
    if verdict == "logprobs":
        assert all(b["logprobs"] is True and b["max_tokens"] == 1 for b in bodies)
        some = next(r for r in records.values() if r["outcome"] == "win")
        assert 0.5 < some["p_a_candidate_first"] < 1 and 0 < some["p_a_candidate_second"] < 0.5
    if verdict == "json":
        assert all(b["response_format"]["type"] == "json_schema" for b in bodies)


def test_too_many_missing_is_unusable_and_strict_fails(cli, tmp_path: Path):
    c_path, b_path, _ = _judge_files(tmp_path, 10, rambling={0, 4})  # 20% missing
    args = ["eval", "winrate", "--judge", "llm", "--model", "small", "--api-key-env", "none", "--cache",
            str(tmp_path / "c.sqlite"), "--candidate", str(c_path), "--baseline", str(b_path)]
    with FakeOpenAI() as server:
        res = cli(*args, "--base-url", server.url, "--json")
        assert res.returncode == 0, res.stderr
        s = res.json()
        assert s["missing"] == 2 and s["n"] == 8 and s["usable"] is False and "not usable" in res.stderr
        strict = cli(*args, "--base-url", server.url, "--strict", "--out", str(tmp_path / "v.jsonl"))
    assert_one_line_error(strict, "2/10 items have no parsable verdict", "--verdict logprobs")
    assert not (tmp_path / "v.jsonl").exists()
    everything = winrate_summary(["missing"] * 3)
    assert everything["win_rate"] is None and everything["ci_low"] is None and not everything["usable"]


def test_letter_probs_sum_spellings():
    top = [{"token": " A", "logprob": math.log(0.3)}, {"token": "a", "logprob": math.log(0.1)},
           {"token": "B", "logprob": math.log(0.5)}, {"token": "Both", "logprob": math.log(0.1)}]
    assert letter_probs(top) == pytest.approx((0.4, 0.5)) and letter_probs(None) == (0.0, 0.0)
