"""docs/quickstart.md end to end: the five documented commands, read from the doc (so doc and test cannot drift),
run through the real console script on a tiny local model and a 64-pair file cut from HH-RLHF.

Only MODEL and PAIRS are substituted; the test appends size limits (steps, problems, tokens) so the run fits in CI,
never changing a documented flag."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from sparsealign.data.preference import load_pairs
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

pytestmark = pytest.mark.slow
DOC = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
# test-only limits per verb, appended after the documented arguments
QUICK = {
    "align": ["--set", "max_steps=2", "--set", "max_length=128", "--set", "max_prompt_length=64",
              "--set", "batch_size=4"],
    "calibrate": ["-n", "12"],
    "mbpp": ["--limit", "3", "--max-new-tokens", "12"],
    "preference": ["--max-length", "128", "--bootstrap", "100"],
    "report": [],
}


def documented_commands() -> list[list[str]]:
    block = re.search(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("sparsealign ")]


def test_quickstart_is_five_commands() -> None:
    cmds = documented_commands()
    assert len(cmds) <= 5 and [c[1] for c in cmds] == ["align", "sparsify", "eval", "eval", "eval"]


def test_quickstart_end_to_end(cli, tmp_path, data_dir) -> None:
    pairs = load_pairs(data_dir / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=64).pairs
    pairs_file = tmp_path / "my_pairs.jsonl"
    pairs_file.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                                  for p in pairs), encoding="utf-8")
    code = [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()][:100]
    model, tok = tiny_model_and_tokenizer(code + [p.prompt + p.chosen for p in pairs], vocab_size=400,
                                          hidden_size=32, num_layers=2, intermediate_size=96,
                                          max_position_embeddings=2048)
    model_dir = save_pretrained(model, tok, tmp_path / "my-model")

    outputs = []
    for words in documented_commands():
        args = [{"MODEL": str(model_dir), "PAIRS": str(pairs_file)}.get(w, w) for w in words[1:]]
        verb = args[1] if args[0] in ("sparsify", "eval") else args[0]
        res = cli(*args, *QUICK[verb], "--json", timeout=900)
        assert res.returncode == 0, f"{' '.join(words)}\n{res.stderr[-2000:]}"
        outputs.append(json.loads(res.stdout.strip().splitlines()[-1]))

    aligned = tmp_path / "runs" / "qs" / "align" / "dpo" / "model"
    assert (aligned / "config.json").exists() and (aligned / "sparsity" / "sparsity.json").exists()
    mbpp = outputs[2]
    assert mbpp["total"] == 3 and mbpp["dense"]["total"] == 3 and mbpp["sparsity"]["mode"] == "dynamic"
    assert mbpp["sparse_minus_dense"]["n"] == 3 and mbpp["extract"] == "harness"
    pref = outputs[3]
    assert pref["n_pairs"] == len(load_pairs(pairs_file, split="eval").pairs) > 0
    assert set(pref["dense"]) == set(pref["metrics"]) and "flip_rate" in pref["flip"]
    assert 0.3 < pref["sparsity"]["realized_sparsity"] < 0.7
    report = (tmp_path / "runs" / "qs" / "report.md").read_text()
    assert outputs[4]["report"].endswith("report.md")
    for needle in ("## MBPP", "| dense |", "sparse - dense", "## Preferences", "flip: flip_rate", "realized"):
        assert needle in report, needle
