"""Acceptance on the real shared files: `data inspect --json` counts, and skipped counts checked against an
independent reading of each raw file (plain json/gzip here, not the project's readers)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.data.preference import load_pairs

HH = ["harmless-base", "helpful-base", "helpful-rejection-sampled"]
HH_COUNTS = {"harmless-base": 2312, "helpful-base": 2354, "helpful-rejection-sampled": 2749}  # from the issue
CUE = "\n\nAssistant:"


def _raw_hh_reasons(path: Path) -> tuple[int, Counter]:
    """Independent classification of each HH record: prompt mismatch, empty response, identical pair."""
    reasons: Counter = Counter()
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
    for line in lines:
        rec = json.loads(line)
        c, r = rec["chosen"], rec["rejected"]
        pc, pr = c[: c.rindex(CUE) + len(CUE)], r[: r.rindex(CUE) + len(CUE)]
        if pc != pr:
            reasons["prompt_mismatch"] += 1
        elif not c[len(pc):].strip() or not r[len(pr):].strip():
            reasons["empty_response"] += 1
        elif c == r:
            reasons["identical"] += 1
    return len(lines), reasons


@pytest.mark.parametrize("subset", HH)
def test_hh_counts_and_degenerate_pairs(cli, data_dir, subset):
    res = cli("data", "inspect", f"hh-rlhf/{subset}/test.jsonl.gz", "--json")
    assert res.returncode == 0, res.stderr
    rep = res.json()
    n, reasons = _raw_hh_reasons(data_dir / "hh-rlhf" / subset / "test.jsonl.gz")
    assert rep["format"] == "hh-rlhf"
    assert rep["count"] == HH_COUNTS[subset] == n
    assert rep["skipped"] == dict(reasons)
    assert rep["valid"] + sum(rep["skipped"].values()) + rep["duplicates"] == rep["count"]
    assert sum(rep["splits"].values()) == rep["valid"]
    # the numbers for these files, re-derived above
    if subset == "helpful-rejection-sampled":
        assert reasons["identical"] == 32
    if subset == "helpful-base":
        assert reasons["empty_response"] == 4 and reasons["prompt_mismatch"] == 9
    # one-line warning on stderr naming the reasons
    warn = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warn) == 1 and all(k in warn[0] for k in reasons)
    ex = rep["example"]
    assert ex["prompt"].startswith("\n\nHuman:") and ex["messages"][-1]["role"] == "user"
    assert ex["chosen"] and ex["rejected"] and ex["id"].endswith(":1")


def test_hh_prompt_and_messages_roundtrip(data_dir):
    """prompt + ' ' + response rebuilds the raw transcript, and the messages are the prompt's turns."""
    path = data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz"
    raw = [json.loads(x) for x in gzip.decompress(path.read_bytes()).decode().splitlines()]
    load = load_pairs(path, warn=False)
    for pair in load.pairs[:300]:
        rec = raw[int(pair.id.rsplit(":", 1)[1]) - 1]
        assert rec["chosen"].startswith(pair.prompt) and rec["chosen"].rstrip().endswith(pair.chosen)
        assert rec["rejected"].startswith(pair.prompt) and rec["rejected"].rstrip().endswith(pair.rejected)
        turns = pair.prompt.count("\n\nHuman:") + pair.prompt.count("\n\nAssistant:") - 1
        assert len(pair.messages) == turns and pair.messages[0]["role"] == "user"
        assert [m["role"] for m in pair.messages][::2] == ["user"] * len(pair.messages[::2])


def test_ultrafeedback_counts_scores_and_degenerate(cli, data_dir):
    path = data_dir / "ultrafeedback_binarized" / "train_clean.jsonl"
    raw = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    empty = [r for r in raw if not r["chosen"].strip() or not r["rejected"].strip()]
    ident = [r for r in raw if r not in empty and r["chosen"].strip() == r["rejected"].strip()]
    kept = [r for r in raw if r not in empty and r not in ident]
    ties = sum(r["metadata"]["score_chosen"] == r["metadata"]["score_rejected"] for r in kept)
    rep = cli("data", "inspect", "ultrafeedback_binarized/train_clean.jsonl", "--json").json()
    assert rep["format"] == "ultrafeedback" and rep["count"] == 1000 == len(raw)
    assert rep["skipped"] == {k: v for k, v in {"empty_response": len(empty), "identical": len(ident)}.items() if v}
    assert rep["valid"] == len({(r["prompt"], r["chosen"].strip(), r["rejected"].strip()) for r in kept})
    assert rep["scores"]["with_scores"] == rep["valid"] and rep["scores"]["ties"] == ties
    assert isinstance(rep["example"]["score_chosen"], float)


def test_orca_openai_preference(cli, data_dir):
    path = data_dir / "orca_dpo_pairs" / "validation.jsonl"
    raw = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    rep = cli("data", "inspect", "orca_dpo_pairs/validation.jsonl", "--json").json()
    assert rep["format"] == "openai-preference" and rep["count"] == 284 == len(raw)
    bad = sum(r["preferred_output"][0]["content"].strip() == r["non_preferred_output"][0]["content"].strip()
              or not r["preferred_output"][0]["content"].strip() for r in raw)
    assert rep["valid"] + rep["duplicates"] == 284 - bad
    ex = rep["example"]
    assert ex["messages"] == raw[0]["input"]["messages"]
    assert ex["prompt"].startswith(raw[0]["input"]["messages"][0]["content"][:50])


def test_mbpp_counts_and_splits(cli):
    rep = cli("data", "inspect", "mbpp/mbpp.jsonl", "--json").json()
    assert rep["format"] == "mbpp" and rep["count"] == 974
    assert rep["splits"] == {"prompt": 10, "test": 500, "validation": 90, "train": 374}
    rep = cli("data", "inspect", "mbpp/sanitized-mbpp.json", "--json", "--split", "test").json()
    assert rep["format"] == "mbpp-sanitized" and rep["count"] == 427 and rep["valid"] == 257
    assert rep["splits"] == {"prompt": 7, "test": 257, "validation": 43, "train": 120}


def test_mbpp_fields_are_byte_exact(data_dir):
    full = data_dir / "mbpp" / "mbpp.jsonl"
    raw = [json.loads(x) for x in full.read_bytes().decode("utf-8").split("\n") if x]
    tasks = load_mbpp()
    assert [t.task_id for t in tasks] == [r["task_id"] for r in raw]
    for t, r in zip(tasks, raw, strict=True):
        assert (t.text, t.code, t.test_list, t.test_setup_code, t.challenge_test_list) == (
            r["text"], r["code"], r["test_list"], r["test_setup_code"], r["challenge_test_list"])
    assert any("\r\n" in t.code for t in tasks) and sum(bool(t.test_setup_code) for t in tasks) == 2
    san = json.loads((data_dir / "mbpp" / "sanitized-mbpp.json").read_text(encoding="utf-8"))
    stasks = load_mbpp("mbpp/sanitized-mbpp.json")
    assert [(t.text, t.test_imports, t.test_list) for t in stasks] == [
        (r["prompt"], r["test_imports"], r["test_list"]) for r in san]
    assert [t.task_id for t in load_mbpp(split="validation")] == list(range(511, 601))


def test_mbpp_reference_solutions_pass_their_tests(data_dir):
    """Setup code, imports and asserts survive exactly: the reference solutions pass (one subprocess), except
    where the setup code itself is defective (it uses the solution's Node class before the solution runs)."""
    full = load_mbpp()
    with_setup = [t for t in full if t.test_setup_code]
    picked = [t for t in full if t.task_id <= 10]
    picked += [t for t in load_mbpp("mbpp/sanitized-mbpp.json") if t.test_imports][:8]
    script = "import sys\nfor src in sys.argv[1:]:\n    exec(compile(src, 'task', 'exec'), {})\nprint('ok')\n"
    programs = [t.test_program(t.code) for t in picked]
    out = subprocess.run([sys.executable, "-c", script, *programs], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
    assert len(picked) >= 18
    for task in with_setup:  # setup code runs first and is kept byte-exact, so the dataset's defect shows
        out = subprocess.run([sys.executable, "-c", task.test_program(task.code)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode != 0 and "NameError: name 'Node' is not defined" in out.stderr, task.task_id
    assert [t.task_id for t in with_setup] == [367, 927]


def test_dataset_folder_keeps_its_splits(cli, tmp_path):
    """A folder named like a hub id (org/name) is read file by file, offline, with splits from the file names."""
    folder = tmp_path / "org" / "prefs"
    folder.mkdir(parents=True)
    for split, n in (("train", 15), ("test", 6)):
        (folder / f"{split}.jsonl").write_text("".join(
            json.dumps({"prompt": f"{split} q{i}", "chosen": "good", "rejected": "bad"}) + "\n" for i in range(n)))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    rep = cli("data", "inspect", "org/prefs", "--json", env=env).json()
    assert rep["count"] == 21 and rep["splits"] == {"train": 15, "test": 6} and rep["splits_from"] == "file"
    rep = cli("data", "inspect", "org/prefs", "--split", "test", "--json", env=env).json()
    assert rep["count"] == 6 and rep["example"]["prompt"] == "test q0"


def test_data_dir_flag_and_no_heavy_imports(cli, tmp_path, data_dir):
    """--data-dir wins over the env var, and `data inspect` on a local file imports no torch/datasets/pandas."""
    code = ("import sys; from sparsealign.cli import main; rc = main(sys.argv[1:]); "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'datasets', 'pandas', 'transformers'}); "
            "print('HEAVY', heavy, file=sys.stderr); sys.exit(rc)")
    env = {**os.environ, "SPARSEALIGN_DATA_DIR": str(tmp_path / "elsewhere")}
    out = subprocess.run([sys.executable, "-c", code, "--data-dir", str(data_dir), "data", "inspect",
                          "hh-rlhf/harmless-base/test.jsonl.gz", "--json"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["count"] == 2312 and "HEAVY []" in out.stderr
