"""The other upstream layouts of the same data: UltraFeedback as message lists with top-level scores (the
HuggingFaceH4 layout), Orca in Intel's native schema, HH as plain JSONL — built from the real shared rows and
required to normalise to the same pairs as the shared files."""

from __future__ import annotations

import gzip
import json

import pytest

from sparsealign.data.formats import detect_format
from sparsealign.data.preference import load_pairs
from sparsealign.errors import UserError


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _core(pairs):
    return [(p.prompt, p.chosen, p.rejected, p.score_chosen, p.score_rejected) for p in pairs]


def test_ultrafeedback_message_lists_with_top_level_scores(tmp_path, data_dir):
    raw = [json.loads(x) for x in (data_dir / "ultrafeedback_binarized" / "train_clean.jsonl").open(encoding="utf-8")]
    rows = [{"prompt": r["prompt"], "prompt_id": f"id{i}",
             "chosen": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["rejected"]}],
             "score_chosen": r["metadata"]["score_chosen"], "score_rejected": r["metadata"]["score_rejected"]}
            for i, r in enumerate(raw[:200])]
    _write_jsonl(tmp_path / "uf.jsonl", rows)
    got = load_pairs(tmp_path / "uf.jsonl", warn=False)
    want = load_pairs("ultrafeedback_binarized/train_clean.jsonl", limit=200, warn=False)
    assert got.format == "ultrafeedback" and want.count == 200
    assert _core(got.pairs) == _core(want.pairs) and got.skipped == want.skipped
    assert got.pairs[0].messages == [{"role": "user", "content": raw[0]["prompt"]}]
    assert got.pairs[0].meta == {"prompt_id": "id0"}


def test_ultrafeedback_conversations_that_differ_are_prompt_mismatch(tmp_path):
    row = {"prompt": "q", "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}
    ok = {**row, "rejected": row["chosen"][:1] + [{"role": "assistant", "content": "b"}]}
    _write_jsonl(tmp_path / "m.jsonl", [row, ok])
    load = load_pairs(tmp_path / "m.jsonl", warn=False)
    assert load.skipped == {"prompt_mismatch": 1} and load.valid == 1


def test_orca_intel_schema_matches_openai_layout(tmp_path, data_dir):
    raw = [json.loads(x) for x in (data_dir / "orca_dpo_pairs" / "validation.jsonl").open(encoding="utf-8")]
    rows = [{"system": r["input"]["messages"][0]["content"], "question": r["input"]["messages"][1]["content"],
             "chosen": r["preferred_output"][0]["content"], "rejected": r["non_preferred_output"][0]["content"]}
            for r in raw]
    _write_jsonl(tmp_path / "intel.jsonl", rows)
    got = load_pairs(tmp_path / "intel.jsonl")
    want = load_pairs("orca_dpo_pairs/validation.jsonl")
    assert got.format == "orca-intel" and want.format == "openai-preference"
    assert _core(got.pairs) == _core(want.pairs)
    assert [p.messages for p in got.pairs] == [p.messages for p in want.pairs]


def test_plain_jsonl_hh_and_limit(tmp_path, data_dir):
    text = gzip.decompress((data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz").read_bytes())
    (tmp_path / "hh.jsonl").write_bytes(text)
    got = load_pairs(tmp_path / "hh.jsonl", warn=False)
    want = load_pairs("hh-rlhf/helpful-base/test.jsonl.gz", warn=False)
    assert got.format == "hh-rlhf" and _core(got.pairs) == _core(want.pairs) and got.skipped == want.skipped
    part = load_pairs(tmp_path / "hh.jsonl", limit=130, warn=False)
    assert part.count == 130 and part.valid + sum(part.skipped.values()) == 130


def test_detection_and_format_errors():
    assert detect_format({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "x"}) == "hh-rlhf"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}) == "generic"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b", "metadata": {}}) == "ultrafeedback"
    assert detect_format({"chosen": "a", "rejected": "b"}) == "trl-implicit"  # TRL's implicit-prompt format
    assert detect_format({"chosen": 5, "rejected": "b"}) is None
    with pytest.raises(UserError, match="allowed: hh-rlhf"):
        load_pairs("orca_dpo_pairs/validation.jsonl", format="dpo")


def test_mbpp_bad_rows(cli, tmp_path):
    good = {"task_id": 1, "text": "t", "code": "x = 1", "test_list": ["assert x == 1"]}
    _write_jsonl(tmp_path / "m.jsonl", [good, {**good, "task_id": "2"}])
    res = cli("data", "inspect", "m.jsonl")
    assert res.returncode == 2 and "m.jsonl:2: field 'task_id' must be an integer" in res.stderr
    _write_jsonl(tmp_path / "m.jsonl", [good, {**good, "task_id": 2, "test_list": []}])
    assert "m.jsonl:2: field 'test_list' is empty" in cli("data", "inspect", "m.jsonl").stderr
    res = cli("data", "inspect", "orca_dpo_pairs/validation.jsonl", "--format", "mbpp")
    assert res.returncode == 2 and "validation.jsonl:1: not an MBPP file" in res.stderr
