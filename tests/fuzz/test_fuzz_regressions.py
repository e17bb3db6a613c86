"""Regression tests for what the fuzzing found or was built to find (issue 14), through the real console script:
each is one line naming the file and the fix, exit 2, no traceback."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import subprocess
import sys

import pytest

from conftest import assert_one_line_error

GOOD = [{"prompt": f"q{i}", "chosen": "a good answer", "rejected": "a bad one"} for i in range(300)]
RAW = "".join(json.dumps(r) + "\n" for r in GOOD).encode()


@pytest.mark.parametrize("cut", ["middle", "before_trailer", "inside_trailer"])
def test_truncated_jsonl_gz_is_an_error_naming_the_file(cli, tmp_path, cut):
    blob = gzip.compress(RAW)
    end = {"middle": len(blob) // 2, "before_trailer": len(blob) - 8, "inside_trailer": len(blob) - 3}[cut]
    (tmp_path / "cut.jsonl.gz").write_bytes(blob[:end])
    res = cli("data", "inspect", "cut.jsonl.gz", "--json")
    assert_one_line_error(res, "cut.jsonl.gz:", "gzip stream ends early", "fix: re-download or re-compress")
    res = cli("data", "inspect", "cut.jsonl.gz", "--json", "--skip-invalid")  # the rows before the cut, counted
    rep = res.json()
    assert rep["skipped"] == {"truncated_gzip": 1} and rep["count"] == rep["valid"] + 1 <= 301


@pytest.mark.parametrize(("suffix", "compress"), [(".bz2", bz2.compress), (".xz", lzma.compress)])
def test_bz2_and_xz_are_read_and_their_truncation_named(cli, tmp_path, suffix, compress):
    blob = compress(RAW)
    (tmp_path / f"ok.jsonl{suffix}").write_bytes(blob)
    rep = cli("data", "inspect", f"ok.jsonl{suffix}", "--json").json()
    assert rep["count"] == rep["valid"] == 300
    (tmp_path / f"cut.jsonl{suffix}").write_bytes(blob[: len(blob) - 5])
    kind = suffix[1:]
    assert_one_line_error(cli("data", "inspect", f"cut.jsonl{suffix}"), f"cut.jsonl{suffix}", f"{kind} stream ends early")


def test_unsupported_compression_names_the_fix(cli, tmp_path):
    (tmp_path / "pairs.jsonl.zst").write_bytes(b"(\xb5/\xfd" + b"\x00" * 20)
    assert_one_line_error(cli("data", "inspect", "pairs.jsonl.zst"), "pairs.jsonl.zst", "not supported",
                          "zstd -d pairs.jsonl.zst")


def test_json_nested_200000_deep_is_one_line(cli, tmp_path):
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    assert_one_line_error(cli("data", "inspect", "deep.json"), "deep.json", "nested deeper than 100 levels")
    row = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "meta": "X"})
    (tmp_path / "deep.jsonl").write_text(json.dumps(GOOD[0]) + "\n" + row.replace('"X"', "[" * 5000 + "]" * 5000))
    assert_one_line_error(cli("data", "inspect", "deep.jsonl"), "deep.jsonl:2:", "nested deeper")
    rep = cli("data", "inspect", "deep.jsonl", "--skip-invalid", "--json").json()
    assert rep["skipped"] == {"too_deep": 1} and rep["valid"] == 1


def test_folder_with_mixed_files_is_one_line_and_a_clean_folder_reads(cli, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "train.jsonl").write_bytes(RAW)
    (mixed / "test.csv").write_text("prompt,chosen,rejected\np,a,b\n")
    (mixed / "README.md").write_text("# card\n")
    assert_one_line_error(cli("data", "inspect", "mixed"), "mixed", "mixes data files of different kinds",
                          "test.csv", "fix: pass one of the files")
    (mixed / "test.csv").unlink()
    (mixed / "test.jsonl").write_text('{"prompt": "t", "chosen": "x", "rejected": 5}\n')
    assert_one_line_error(cli("data", "inspect", "mixed"), "mixed/test.jsonl:1:", "'rejected' must be a string")
    (mixed / "test.jsonl").write_text('{"prompt": "t", "chosen": "x", "rejected": "y"}\n')
    rep = cli("data", "inspect", "mixed", "--json").json()
    assert rep["splits"] == {"train": 300, "test": 1} and rep["count"] == 301
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("data", "inspect", "empty"), "empty", "no data files")


def test_devices_duplicate_keys_and_utf16_are_named(cli, tmp_path):
    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")  # never ends: refused before reading
    assert_one_line_error(cli("data", "inspect", "zero.jsonl", timeout=60), "zero.jsonl", "device")
    (tmp_path / "dup.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "chosen": "c"}\n')
    assert_one_line_error(cli("data", "inspect", "dup.jsonl"), "dup.jsonl:1:", "key 'chosen' appears twice")
    (tmp_path / "dup.csv").write_text("prompt,chosen,chosen,rejected\np,a,b,c\n")
    assert_one_line_error(cli("data", "inspect", "dup.csv"), "dup.csv:1:", "column 'chosen' appears twice")
    (tmp_path / "u16.json").write_bytes(json.dumps(GOOD[:2]).encode("utf-16"))
    assert_one_line_error(cli("data", "inspect", "u16.json"), "u16.json", "UTF-16", "iconv")


def test_parquet_gz_and_long_csv_cells_are_read(cli, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(GOOD), tmp_path / "p.parquet")
    (tmp_path / "p.parquet.gz").write_bytes(gzip.compress((tmp_path / "p.parquet").read_bytes()))
    assert cli("data", "inspect", "p.parquet.gz", "--json").json()["valid"] == 300
    (tmp_path / "long.csv").write_text(f"prompt,chosen,rejected\np,{'x' * 300_000},b\n")  # past csv's 128 KiB default
    assert cli("data", "inspect", "long.csv", "--json").json()["valid"] == 1


def test_offline_hub_id_fails_at_once_naming_hf_hub_offline(tmp_path, data_dir):
    """HF_HUB_OFFLINE set and the id not cached: one line naming the variable, without importing `datasets`
    (whose retries made this take ~24 s)."""
    code = ("import sys; from sparsealign.cli import main; rc = main(sys.argv[1:]); "
            "print('DATASETS', 'datasets' in sys.modules, file=sys.stderr); sys.exit(rc)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "SPARSEALIGN_DATA_DIR": str(data_dir), **{k: v for k, v in __import__("os").environ.items()
                                                      if k == "PYTHONPATH"}}
    out = subprocess.run([sys.executable, "-c", code, "data", "inspect", "Anthropic/hh-rlhf"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines[-1] == "DATASETS False", out.stderr
    assert len(lines) == 2 and "Anthropic/hh-rlhf: could not reach" in lines[0] and "HF_HUB_OFFLINE" in lines[0]


def test_config_yaml_breakage_is_one_line(cli, tmp_path):
    (tmp_path / "dup.yaml").write_text("seed: 1\nseed: 2\n")
    assert_one_line_error(cli("study", "--config", "dup.yaml", "plan"), "dup.yaml:2:", "key 'seed' appears twice")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    (tmp_path / "bomb.yaml").write_text(bomb + "sizes: *h\n")
    assert_one_line_error(cli("study", "--config", "bomb.yaml", "plan", timeout=60), "bomb.yaml", "aliases")
    (tmp_path / "deep.yaml").write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    assert_one_line_error(cli("study", "--config", "deep.yaml", "plan"), "deep.yaml", "nested deeper")
    res = cli("study", "--set", "seed=" + "[" * 3000 + "]" * 3000, "plan")
    assert_one_line_error(res, "--set seed", "nested deeper")


def test_lone_surrogate_escape_is_a_row_error(cli, tmp_path):
    """`"\\ud800"` is valid JSON syntax but no text: it crashed the split hashing with a UnicodeEncodeError."""
    (tmp_path / "s.jsonl").write_text(json.dumps(GOOD[0]) + "\n" + '{"prompt": "q\\ud800", "chosen": "a", '
                                      '"rejected": "b"}\n')
    assert_one_line_error(cli("data", "inspect", "s.jsonl"), "s.jsonl:2:", "lone surrogate")
    assert cli("data", "inspect", "s.jsonl", "--skip-invalid", "--json").json()["valid"] == 1


def test_unknown_study_preset_names_the_config_file_and_field(cli, tmp_path):
    (tmp_path / "s.yaml").write_text("family:\n  preset: huge\n")
    assert_one_line_error(cli("study", "--config", "s.yaml", "plan"), "s.yaml", "family", "unknown preset 'huge'",
                          "micro, small")
    assert_one_line_error(cli("study", "--set", "family.sizes=[zz]", "plan"), "--set", "unknown size(s) zz")
