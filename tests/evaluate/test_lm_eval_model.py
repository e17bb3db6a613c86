"""The lm-eval model `sparsealign` through lm-eval's real CLI (subprocess): plain `lm_eval` (the installed .pth
registers the model) and our `sparsealign-lm-eval` wrapper, on local tasks (a generate_until task
and a multiple_choice task built from local JSONL with `dataset_path: json`; no download): dense vs threshold-0
sparse give identical results, and a calibrated 0.5 target is realized."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow

GEN_YAML = """\
task: sa_local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{text}}}}\\n{{{{test}}}}\\n[BEGIN]\\n"
doc_to_target: "{{{{code}}}}"
generation_kwargs:
  until: ["[DONE]"]
  do_sample: false
  max_gen_toks: 10
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

MC_YAML = """\
task: sa_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    rows = [json.loads(line) for line in (data_dir / "mbpp" / "mbpp.jsonl").open()][10:13]
    with (root / "gen.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "test": r["test_list"][0], "code": r["code"]}) + "\n")
    with (root / "mc.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({"question": r["text"], "choices": [r["code"][:40], "pass", "return None"],
                                "label": 0}) + "\n")
    (root / "gen.yaml").write_text(GEN_YAML.format(data=root / "gen.jsonl"))
    (root / "mc.yaml").write_text(MC_YAML.format(data=root / "mc.jsonl"))
    return root


PLAIN_LM_EVAL = [str(Path(sys.executable).with_name("lm_eval"))]  # lm-eval's own console script, unchanged
WRAPPER = [sys.executable, "-m", "sparsealign.evaluate.lm_eval_model"]


def _lm_eval(tmp: Path, tasks_dir: Path, model_args: str, launcher: list[str] = PLAIN_LM_EVAL) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp / "ds"),
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [*launcher, "--model", "sparsealign", "--model_args",
           model_args + ",dtype=float32", "--tasks", "sa_local_gen", "sa_local_mc", "--include_path",
           str(tasks_dir), "--device", "cpu", "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(out / "*" / "results_*.json"))[0]).read_text())
    samples = {}
    for path in glob.glob(str(out / "*" / "samples_*.jsonl")):
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        task = "gen" if "sa_local_gen" in Path(path).name else "mc"
        samples[task] = [r["resps"] for r in sorted(rows, key=lambda r: r["doc_id"])]
    return {"results": results["results"], "config": results["config"], "samples": samples}


def test_dense_vs_threshold_zero_identical_and_target_realized(tmp_path, tasks_dir, calibrated) -> None:
    model = calibrated / "m0"
    dense = _lm_eval(tmp_path / "dense", tasks_dir, f"pretrained={model}", launcher=WRAPPER)
    zero = _lm_eval(tmp_path / "zero", tasks_dir,
                    f"pretrained={model},sparsity={calibrated / 's0'},mode=static,prefill=sparse")
    half = _lm_eval(tmp_path / "half", tasks_dir,
                    f"pretrained={model},sparsity={calibrated / 's50'},mode=dynamic,prefill=sparse")
    assert dense["config"]["sparsity"] is None
    assert zero["samples"] == dense["samples"] and len(dense["samples"]) == 2  # generations and loglikelihoods
    assert zero["results"] == dense["results"]
    # threshold 0 masks only exact zeros: the pad-token positions of padded batches (zero embedding), which the
    # patch's statistics still count (padding-aware stats are issue 9's batch-invariant controller work)
    assert zero["config"]["sparsity"]["realized_sparsity"] < 0.15
    sp = half["config"]["sparsity"]
    assert sp["mode"] == "dynamic" and sp["target_sparsity"] == 0.5 and abs(sp["realized_sparsity"] - 0.5) < 0.12
    assert all(layer["tokens"] > 0 for layer in sp["layers"])
    assert half["samples"] != dense["samples"]  # the loglikelihoods move under sparsity
