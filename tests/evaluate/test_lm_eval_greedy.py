"""The lm-eval model `sparsealign` and `eval mbpp` decode greedy requests through one loop (evaluate/greedy.py):
the same programs under dynamic sparsity; `pretrained=` takes the project's model specs (short names offline) and a
spec that cannot load is one line through lm-eval's own CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from sparse_helpers import load_code_and_dialogue, load_stories  # noqa: E402
from sparsealign.data.mbpp.prompts import lm_eval_query  # noqa: E402
from sparsealign.data.mbpp.tasks import load_mbpp  # noqa: E402
from sparsealign.evaluate.generation import SamplingConfig  # noqa: E402
from sparsealign.evaluate.mbpp.evaluator import MbppEvalConfig  # noqa: E402
from sparsealign.evaluate.mbpp.run import MbppRunConfig, run_mbpp  # noqa: E402
from sparsealign.sparse.spec import SparsitySpec  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NEW_TOKENS = 24


def _requests(prompts: list[str]) -> list:
    from lm_eval.api.instance import Instance

    kwargs = {"until": ["[DONE]"], "do_sample": False, "max_gen_toks": NEW_TOKENS}  # lm-eval's mbpp, shorter
    return [Instance("generate_until", {}, (p, dict(kwargs)), i, ("mbpp", i, 1)) for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def stories_dir(tmp_path_factory, data_dir) -> Path:
    """stories260K (real weights: its greedy text varies, a random tiny model's repeats one token) saved as a
    folder, with dynamic-sparsity artifacts calibrated at 0.5 on MBPP code."""
    from sparsealign.models.tiny import save_pretrained
    from sparsealign.sparse.artifacts import save_artifacts
    from sparsealign.sparse.calibration.calibrate import calibrate
    from sparsealign.sparse.config import SparsityConfig

    model, tok = load_stories(data_dir)
    root = save_pretrained(model, tok, tmp_path_factory.mktemp("stories") / "model")
    code = load_code_and_dialogue(data_dir)[0][500:530]
    save_artifacts(calibrate(model, tok, code, SparsityConfig(target_sparsity=0.5, max_length=128)), root / "sparsity")
    return root


def _eval_mbpp(model: Path, sparsity: SparsitySpec | None, n: int, tmp: Path) -> list[str]:
    import pandas as pd

    cfg = MbppRunConfig(model=str(model), sparsity=sparsity, limit=n, device="cpu", dtype="float32",
                        eval=MbppEvalConfig(shots=0, sampling=SamplingConfig(max_new_tokens=NEW_TOKENS,
                                                                             batch_size=4)))
    out = tmp / f"records-{sparsity is not None}.jsonl"
    run_mbpp(cfg, out_path=str(out))
    return list(pd.read_json(out, lines=True)["completion"])


def test_generate_until_gives_eval_mbpps_completions_under_dynamic_sparsity(stories_dir, tmp_path) -> None:
    from sparsealign.evaluate.lm_eval_model import SparseAlignLM

    n, model, art = 8, stories_dir, str(stories_dir / "sparsity")
    prompts = [lm_eval_query(t) for t in load_mbpp(split="test")[:n]]  # lm-eval's mbpp query (512-token context)
    spec = SparsitySpec(artifacts=art, mode="dynamic")
    ours = _eval_mbpp(model, spec, n, tmp_path)
    # another batch size and request order than eval mbpp's: the rows decode as they do alone
    lm = SparseAlignLM(pretrained=str(model), sparsity=art, mode="dynamic", device="cpu", dtype="float32",
                       batch_size=3)
    order = list(reversed(range(n)))
    theirs = lm.generate_until(_requests([prompts[i] for i in order]), disable_tqdm=True)
    assert [theirs[order.index(i)] for i in range(n)] == ours
    assert lm.sparsity_handle.stats()["realized_sparsity"] > 0.3
    assert ours != _eval_mbpp(model, None, n, tmp_path)  # the sparsity changed the programs
    # a sampling request is HFLM's own, beside the greedy ones
    sampled = _requests(prompts[:1])[0]
    sampled.arguments[1].update(do_sample=True, temperature=0.7)
    texts = lm.generate_until([sampled, *_requests(prompts[:1])], disable_tqdm=True)
    assert texts[1] == ours[0] and isinstance(texts[0], str)


def test_an_adapter_folder_decodes_as_eval_mbpp_decodes_it(stories_dir, tmp_path) -> None:
    """pretrained=ADAPTER: its base plus peft=, merged as the project's loader merges it (same programs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sparsealign.evaluate.lm_eval_model import SparseAlignLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(stories_dir)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(tmp_path / "adapter")
    n = 4
    ours = _eval_mbpp(tmp_path / "adapter", None, n, tmp_path)
    lm = SparseAlignLM(pretrained=str(tmp_path / "adapter"), device="cpu", dtype="float32", batch_size=2)
    prompts = [lm_eval_query(t) for t in load_mbpp(split="test")[:n]]
    assert lm.generate_until(_requests(prompts), disable_tqdm=True) == ours
    assert ours != _eval_mbpp(stories_dir, None, n, tmp_path)  # the adapter is applied


@pytest.mark.slow
def test_a_spec_that_cannot_load_is_one_line_through_lm_evals_cli(tmp_path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    lm_eval = str(Path(sys.executable).with_name("lm_eval"))
    proc = subprocess.run([lm_eval, "--model", "sparsealign", "--model_args", "pretrained=no-such-model",
                           "--tasks", "mbpp", "--limit", "1"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no-such-model: model not found")


@pytest.mark.real_model
def test_short_name_loads_offline(smollm2, monkeypatch) -> None:
    from sparsealign.evaluate.lm_eval_model import SparseAlignLM
    from sparsealign.models.loading import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = SparseAlignLM(pretrained="smollm2-135m-instruct", device="cpu", dtype="float32")
    assert lm.model.config.num_hidden_layers == 30
    assert lm.model.name_or_path == resolve_model("smollm2-135m-instruct").path
