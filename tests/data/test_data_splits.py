"""Deterministic splits, nested subsets, and the generic format round-trip (JSONL, JSON, CSV, Parquet)."""

from __future__ import annotations

import csv
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsealign.data.preference import load_pairs, write_pairs_jsonl
from sparsealign.data.records import PreferencePair
from sparsealign.data.splits import nested_subsets, split_pairs


@pytest.fixture(scope="module")
def hh_pairs():
    return load_pairs("hh-rlhf/harmless-base/test.jsonl.gz", warn=False).pairs


@pytest.fixture(scope="module")
def uf_pairs():
    """Real UltraFeedback pairs with scores, plus a rationale and messages on some, as the generic format holds."""
    pairs = load_pairs("ultrafeedback_binarized/train_clean.jsonl", warn=False).pairs[:60]
    for i, p in enumerate(pairs):
        if i % 2:
            p.rationale = f"Response A is better because of point {i}: it is \"correct\",\nand shorter."
            p.messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": p.prompt}]
    return pairs


def test_split_is_deterministic_and_order_independent(hh_pairs):
    train, ev = split_pairs(hh_pairs, 0.1, seed=0)
    assert (train, ev) == split_pairs(hh_pairs, 0.1, seed=0)
    assert len(train) + len(ev) == len(hh_pairs)
    assert {p.id for p in train}.isdisjoint(p.id for p in ev)
    shuffled = list(hh_pairs)
    random.Random(1).shuffle(shuffled)
    assert {p.id for p in split_pairs(shuffled, 0.1, seed=0)[1]} == {p.id for p in ev}
    assert {p.id for p in split_pairs(hh_pairs, 0.1, seed=1)[1]} != {p.id for p in ev}
    biggest_group = max(sum(q.prompt == p.prompt for q in hh_pairs) for p in ev)
    assert round(0.1 * len(hh_pairs)) <= len(ev) < round(0.1 * len(hh_pairs)) + biggest_group
    assert {p.prompt for p in train}.isdisjoint(p.prompt for p in ev)  # no prompt leaks into eval
    assert [p.id for p in ev] == [p.id for p in hh_pairs if p in ev]  # input order kept


def test_shared_prompts_stay_together():
    pairs = [PreferencePair(id=str(i), prompt=f"p{i % 7}", chosen=f"c{i}", rejected=f"r{i}") for i in range(70)]
    train, ev = split_pairs(pairs, 0.3, seed=3)
    assert {p.prompt for p in train}.isdisjoint(p.prompt for p in ev)
    assert len(ev) == 30  # whole groups of 10 until round(0.3 * 70) = 21 is reached


def test_nested_subsets(hh_pairs):
    fracs = [1 / 9, 1 / 3, 1.0]
    small, mid, full = nested_subsets(hh_pairs, fracs, seed=0)
    n = len(hh_pairs)
    assert [len(small), len(mid), len(full)] == [round(n / 9), round(n / 3), n]
    assert {p.id for p in small} <= {p.id for p in mid} <= {p.id for p in full}
    assert nested_subsets(hh_pairs, fracs, seed=0)[0] == small
    assert {p.id for p in nested_subsets(hh_pairs, fracs, seed=5)[0]} != {p.id for p in small}
    with pytest.raises(ValueError):
        nested_subsets(hh_pairs, [0.0, 1.0])


def test_load_split_option_matches_split_pairs(hh_pairs):
    ev = load_pairs("hh-rlhf/harmless-base/test.jsonl.gz", split="eval", warn=False).pairs
    assert ev == split_pairs(hh_pairs)[1]


def _rows(pairs):
    return [p.to_dict() for p in pairs]


def test_roundtrip_jsonl(tmp_path, uf_pairs):
    write_pairs_jsonl(uf_pairs, tmp_path / "p.jsonl")
    load = load_pairs(tmp_path / "p.jsonl")
    assert load.format == "generic" and load.pairs == uf_pairs


def test_roundtrip_json(tmp_path, uf_pairs):
    (tmp_path / "p.json").write_text(json.dumps(_rows(uf_pairs), ensure_ascii=False, indent=2), encoding="utf-8")
    assert load_pairs(tmp_path / "p.json").pairs == uf_pairs


def test_roundtrip_csv(tmp_path, uf_pairs):
    rows = _rows(uf_pairs)
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v
                             for k, v in row.items()})
    load = load_pairs(tmp_path / "p.csv")
    assert load.format == "generic" and load.pairs == uf_pairs


def test_roundtrip_parquet(tmp_path, uf_pairs):
    rows = [{**r, "meta": json.dumps(r["meta"])} for r in _rows(uf_pairs)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    assert load_pairs(tmp_path / "p.parquet").pairs == uf_pairs


def test_minimal_csv_and_split_column(cli, tmp_path):
    """A hand-written CSV with only the required columns and its own split column."""
    text = "prompt,chosen,rejected,split\n" + "".join(
        f'"q{i}, with comma","yes\n{i}",no{i},{"test" if i % 4 == 0 else "train"}\n' for i in range(20))
    (tmp_path / "m.csv").write_text(text)
    rep = cli("data", "inspect", "m.csv", "--json").json()
    assert rep["format"] == "generic" and rep["count"] == 20 and rep["splits"] == {"test": 5, "train": 15}
    assert rep["example"]["id"] == "m.csv:2" and rep["example"]["chosen"] == "yes\n0"
    assert cli("data", "inspect", "m.csv", "--split", "test", "--json").json()["valid"] == 5
