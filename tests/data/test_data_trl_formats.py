"""TRL's preference formats (docs: "Dataset formats and types"), built from the real UltraFeedback rows and checked
against TRL's own `extract_prompt` (the split DPOTrainer applies to implicit-prompt data):

    explicit, standard        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}   -> generic
    explicit, conversational  {"prompt": [user msg], "chosen": [assistant msg], "rejected": [...]}  -> trl-explicit
    implicit, standard        {"chosen": "The sky is blue.", "rejected": "The sky is green."}     -> trl-implicit
    implicit, conversational  {"chosen": [user, assistant], "rejected": [user, assistant]}        -> trl-implicit
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trl import extract_prompt

from conftest import assert_one_line_error
from sparsealign.data.formats import detect_format
from sparsealign.data.preference import load_pairs


@pytest.fixture(scope="module")
def uf(data_dir):
    with (data_dir / "ultrafeedback_binarized" / "train_clean.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(next(fh)) for _ in range(120)]
    # the 6 degenerate rows of the real file (identical / empty) are skipped the same way in every layout
    return [r for r in rows if r["chosen"].strip() and r["rejected"].strip() and r["chosen"] != r["rejected"]]


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _user(r):
    return [{"role": "user", "content": r["prompt"]}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def test_implicit_conversational_is_split_like_trl(tmp_path, uf):
    rows = [{"chosen": _user(r) + _assistant(r["chosen"]), "rejected": _user(r) + _assistant(r["rejected"]),
             "score_chosen": r["metadata"]["score_chosen"], "score_rejected": r["metadata"]["score_rejected"]}
            for r in uf]  # the trl-lib/ultrafeedback_binarized layout
    load = load_pairs(_write(tmp_path / "implicit.jsonl", rows), warn=False)
    assert load.format == "trl-implicit" and load.valid == len(uf) and load.skipped == {}
    for row, pair in zip(rows, load.pairs, strict=True):
        want = extract_prompt(row)
        assert pair.messages == want["prompt"]
        assert (pair.chosen, pair.rejected) == (want["chosen"][-1]["content"], want["rejected"][-1]["content"])
        assert pair.prompt == want["prompt"][0]["content"] and pair.score_chosen == row["score_chosen"]


def test_implicit_standard_is_split_like_trl(tmp_path, uf):
    rows = [{"chosen": f"{r['prompt']} {r['chosen']}", "rejected": f"{r['prompt']} {r['rejected']}"} for r in uf]
    load = load_pairs(_write(tmp_path / "implicit-std.jsonl", rows), warn=False)
    assert load.format == "trl-implicit" and load.valid == len(rows) and load.skipped == {}
    for row, pair in zip(rows, load.pairs, strict=True):  # two rows have one answer a prefix of the other
        want = extract_prompt(row)
        assert (pair.prompt, pair.chosen, pair.rejected) == (want["prompt"], want["chosen"], want["rejected"])


def test_explicit_conversational_is_not_ultrafeedback(tmp_path, uf):
    rows = [{"prompt": _user(r), "chosen": _assistant(r["chosen"]), "rejected": _assistant(r["rejected"])}
            for r in uf]
    load = load_pairs(_write(tmp_path / "explicit.jsonl", rows), warn=False)
    assert load.format == "trl-explicit" and load.valid == len(uf)
    want = load_pairs("ultrafeedback_binarized/train_clean.jsonl", limit=120, warn=False).pairs
    assert [(p.prompt, p.chosen, p.rejected) for p in load.pairs] == [(p.prompt, p.chosen, p.rejected) for p in want]
    assert load.pairs[0].messages == _user(uf[0])


def test_explicit_standard_keeps_texts_as_trl_concatenates_them(tmp_path):
    path = _write(tmp_path / "std.jsonl", [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}])
    pair = load_pairs(path).pairs[0]
    assert load_pairs(path).format == "generic" and (pair.prompt, pair.chosen) == ("The sky is", " blue.")


def test_trl_parquet_as_datasets_writes_it_and_cli(cli, tmp_path, uf):
    """Message lists as Parquet list<struct> columns (what `Dataset.to_parquet` writes), through the real CLI."""
    rows = [{"chosen": _user(r) + _assistant(r["chosen"]), "rejected": _user(r) + _assistant(r["rejected"])}
            for r in uf[:20]]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    res = cli("data", "inspect", "train.parquet", "--json")
    assert res.returncode == 0, res.stderr
    rep = res.json()
    assert rep["format"] == "trl-implicit" and rep["count"] == rep["valid"] == 20
    assert rep["example"]["messages"] == _user(uf[0])


def test_implicit_problems_are_counted_or_named(tmp_path, uf):
    r = uf[0]
    rows = [{"chosen": _user(r) + _assistant("a"), "rejected": [{"role": "user", "content": "other"}]
             + _assistant("b")},  # different prompts: degenerate, skipped and counted
            {"chosen": _assistant("a"), "rejected": _assistant("b")},  # no prompt turn: broken
            {"chosen": _user(r) + _assistant("a"), "rejected": _user(r) + _assistant("b")}]
    path = _write(tmp_path / "m.jsonl", rows)
    load = load_pairs(path, skip_invalid=True, warn=False)
    assert load.skipped == {"prompt_mismatch": 1, "missing_field": 1} and load.valid == 1
    assert detect_format({"chosen": [], "rejected": []}) == "trl-implicit"
    assert detect_format({"prompt": _user(r), "chosen": "a", "rejected": "b"}) == "trl-explicit"


def test_hh_row_without_assistant_turn_is_an_error_not_an_implicit_pair(cli, tmp_path):
    """Issue 23 item 7: this row used to be split as TRL implicit text mid-word (prompt '...hi ther', chosen 'e')."""
    row = '{"chosen": "\\n\\nHuman: hi there", "rejected": "\\n\\nHuman: hi there!"}\n'
    (tmp_path / "hh.jsonl").write_text(row, encoding="utf-8")
    res = cli("data", "inspect", "hh.jsonl")
    assert_one_line_error(res, "hh.jsonl:1:", "Assistant", "broken HH row")
    # after a valid implicit row the file's format is trl-implicit; the HH-looking row is still refused by line
    (tmp_path / "mixed.jsonl").write_text('{"chosen": "The sky is blue.", "rejected": "The sky is green."}\n' + row,
                                          encoding="utf-8")
    assert_one_line_error(cli("data", "inspect", "mixed.jsonl"), "mixed.jsonl:2:", "broken HH row")
    assert detect_format(json.loads(row)) == "hh-rlhf"
