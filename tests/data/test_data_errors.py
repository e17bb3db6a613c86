"""Bad input through the real CLI: a one-line error naming file, line and reason, exit code 2, nothing written."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from conftest import assert_one_line_error

GOOD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


def _jsonl(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


# name -> (file content, needles in the error line)
CASES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "invalid_json": (_jsonl(GOOD, b'{"prompt": "p", "chosen": '), ("bad.jsonl:2:", "invalid JSON")),
    "non_utf8": (_jsonl(GOOD, b'{"prompt": "p\xff", "chosen": "a", "rejected": "b"}'), ("bad.jsonl:2:", "UTF-8")),
    "wrong_type": (_jsonl(GOOD, {**GOOD, "chosen": 5}), ("bad.jsonl:2:", "'chosen'", "got int")),
    "not_an_object": (_jsonl(GOOD, [1, 2]), ("bad.jsonl:2:", "expected a JSON object")),
    "missing_field": (_jsonl(GOOD, {"prompt": "q", "chosen": "a"}), ("bad.jsonl:2:", "missing required field 'rejected'")),
    "empty_file": (b"", ("bad.jsonl", "empty file")),
    "blank_lines_only": (b"\n\n  \n", ("bad.jsonl", "empty file")),
    "unknown_format": (_jsonl({"foo": 1, "bar": 2}), ("bad.jsonl:1:", "unknown format", "--format")),
    "no_usable_pair": (_jsonl({**GOOD, "rejected": "4"}, {**GOOD, "chosen": " "}),
                       ("bad.jsonl", "no usable preference pair", "identical=1", "empty_response=1")),
}


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_file_inspect_and_prepare(cli, tmp_path, case):
    content, needles = CASES[case]
    (tmp_path / "bad.jsonl").write_bytes(content)
    before = _listing(tmp_path)
    res = cli("data", "inspect", "bad.jsonl", "--json")
    assert_one_line_error(res, *needles)
    assert res.returncode == 2 and res.stdout == ""
    assert _listing(tmp_path) == before
    res = cli("data", "prepare", "--name", "r", "bad.jsonl")
    assert_one_line_error(res, *needles)
    # the cell failed: no source directory and no temp leftovers; the ledger records the error
    assert not [p for p in _listing(tmp_path) - before if "/data/" in p or p.endswith(".tmp")]


def test_truncated_gzip(cli, tmp_path, data_dir):
    raw = gzip.decompress((data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz").read_bytes())
    blob = gzip.compress(raw[:300_000])
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[: len(blob) // 2])
    complete = zlib.decompressobj(31).decompress(blob[: len(blob) // 2]).count(b"\n")
    res = cli("data", "inspect", "cut.jsonl.gz")
    assert_one_line_error(res, "cut.jsonl.gz:", "truncated")
    line = int(res.stderr.split("cut.jsonl.gz:")[1].split(":")[0])
    assert 1 <= line <= complete + 1
    res = cli("data", "inspect", "cut.jsonl.gz", "--skip-invalid", "--json")
    assert res.returncode == 0, res.stderr
    rep = res.json()
    assert rep["skipped"]["truncated_gzip"] == 1 and rep["count"] == line and rep["valid"] <= line - 1


def test_corrupt_gzip_and_byte_order_mark(cli, tmp_path):
    (tmp_path / "plain.jsonl.gz").write_bytes(_jsonl(GOOD))  # not gzip at all
    assert_one_line_error(cli("data", "inspect", "plain.jsonl.gz"), "plain.jsonl.gz:1:", "corrupt gzip")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfprompt,chosen,rejected\np,a,b\n")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + _jsonl(GOOD))
    for name in ("bom.csv", "bom.jsonl"):
        res = cli("data", "inspect", name, "--json")
        assert res.returncode == 0 and res.json()["valid"] == 1, res.stderr


def test_missing_path_names_expected_file_and_hub_source(cli, tmp_path):
    res = cli("data", "inspect", "hh-rlhf/helpful-base/train.jsonl.gz")
    assert_one_line_error(res, "hh-rlhf/helpful-base/train.jsonl.gz", "not found", "Anthropic/hh-rlhf")
    res = cli("data", "prepare", "--name", "r", "orca_dpo_pairs/validation.jsonl", "no/such/file.jsonl")
    assert_one_line_error(res, "no/such/file.jsonl", "not found")
    assert not (tmp_path / "runs").exists()  # checked before anything is written


def test_unknown_suffix_and_bad_format_choice(cli, tmp_path):
    (tmp_path / "notes.txt").write_text("just text\n")
    assert_one_line_error(cli("data", "inspect", "notes.txt"), "notes.txt", "unknown file format")
    res = cli("data", "inspect", "orca_dpo_pairs/validation.jsonl", "--format", "nope")
    assert res.returncode == 2 and "hh-rlhf" in res.stderr and "Traceback" not in res.stderr


def test_wrong_forced_format_names_line(cli):
    res = cli("data", "inspect", "orca_dpo_pairs/validation.jsonl", "--format", "hh-rlhf")
    assert_one_line_error(res, "validation.jsonl:1:", "missing required field 'chosen'", "hh-rlhf")


def test_json_array_and_csv_locations(cli, tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([GOOD, {**GOOD, "rejected": None}], indent=1))
    assert_one_line_error(cli("data", "inspect", "a.json"), "a.json", "record 2", "missing required field 'rejected'")
    (tmp_path / "b.json").write_text('[{"prompt": "p",\n "chosen": }]')
    assert_one_line_error(cli("data", "inspect", "b.json"), "b.json:2:", "invalid JSON")
    (tmp_path / "c.csv").write_text('prompt,chosen,rejected\n"multi\nline",a,b\nx,y\n')
    assert_one_line_error(cli("data", "inspect", "c.csv"), "c.csv:4:", "2 fields", "header has 3")


def test_strict_makes_degenerate_pairs_errors(cli, tmp_path):
    (tmp_path / "d.jsonl").write_bytes(_jsonl(GOOD, {**GOOD, "prompt": "x"}, {**GOOD, "rejected": "4"}))
    res = cli("data", "inspect", "d.jsonl", "--json")
    assert res.returncode == 0 and res.json()["skipped"] == {"identical": 1} and res.json()["valid"] == 2
    assert "warning: d.jsonl: skipped 1 degenerate pairs (identical=1)" in res.stderr
    res = cli("data", "inspect", "d.jsonl", "--strict")
    assert_one_line_error(res, "d.jsonl:3:", "degenerate pair", "identical")
    res = cli("data", "prepare", "--name", "s", "--strict", "d.jsonl")
    assert_one_line_error(res, "d.jsonl:3:", "identical")
    assert not list((tmp_path / "runs" / "s").glob("data/*"))


def test_skip_invalid_counts_broken_rows_by_reason(cli, tmp_path):
    rows = [GOOD, b"{oops", {**GOOD, "prompt": "b", "chosen": 1}, {**GOOD, "prompt": "c"},
            b'{"prompt": "\xfe", "chosen": "a", "rejected": "b"}', {"prompt": "e", "chosen": "a"}, b"[1]",
            {**GOOD, "prompt": "c"}, {**GOOD, "prompt": "f", "chosen": ""}]
    (tmp_path / "m.jsonl").write_bytes(_jsonl(*rows))
    assert_one_line_error(cli("data", "inspect", "m.jsonl"), "m.jsonl:2:", "invalid JSON", "--skip-invalid")
    res = cli("data", "inspect", "m.jsonl", "--skip-invalid", "--json")
    assert res.returncode == 0, res.stderr
    rep = res.json()
    assert rep["count"] == 9 and rep["valid"] == 2 and rep["duplicates"] == 1
    assert rep["skipped"] == {"invalid_json": 1, "wrong_type": 2, "non_utf8": 1, "missing_field": 1,
                              "empty_response": 1}
    res = cli("data", "prepare", "--name", "k", "--skip-invalid", "m.jsonl", "--json")
    assert res.returncode == 0, res.stderr
    stats = json.loads((tmp_path / "runs" / "k" / "data" / "m" / "stats.json").read_text())
    assert stats["skipped"] == rep["skipped"] and stats["splits"]["train"] + stats["splits"]["eval"] == 2


def test_offline_hub_id_is_one_line_error(cli, tmp_path):
    res = cli("data", "inspect", "Anthropic/hh-rlhf", env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
                                                          "HF_HOME": str(tmp_path / "hf")})
    assert_one_line_error(res, "Anthropic/hh-rlhf", "could not reach", "local file")
