"""apply_sparsity on real (tiny, random-init) HF models: exactness at threshold 0, removal, calibration accuracy on
held-out text, predictors, fast decode == reference, prefill policy, artifacts round trip, Qwen2/Mistral."""

from __future__ import annotations

import json

import pytest
import torch

from sparsealign.errors import UserError
from sparsealign.models.tiny import build_llama, train_tokenizer
from sparsealign.sparse.artifacts import load_artifacts, save_artifacts
from sparsealign.sparse.bench.quality import evaluate_sparsity
from sparsealign.sparse.calibration.calibrate import calibrate, record_activations
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime.patch import SparseMLP, apply_sparsity, find_mlps


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention on the shared CPUs
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def code(data_dir):
    return [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]


@pytest.fixture(scope="module")
def tok(code):
    return train_tokenizer(code[:200], vocab_size=384)


def llama(tok, act="silu", seed=0):
    return build_llama(len(tok), hidden_size=64, num_layers=2, intermediate_size=256, hidden_act=act, seed=seed,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


@pytest.fixture(scope="module")
def model(tok):
    return llama(tok)


@pytest.fixture(scope="module")
def recording(model, tok, code):
    return record_activations(model, tok, code[200:260], max_length=128)


@pytest.fixture(scope="module")
def artifacts(model, tok, recording):
    cfg = SparsityConfig(target_sparsity=0.6, predictor={"enabled": True, "rank": 32, "recall_target": 0.9})
    return calibrate(model, tok, [], cfg, recording=recording)


def ids_of(tok, text, n=48):
    return tok(text, return_tensors="pt")["input_ids"][:, :n]


@torch.no_grad()
def test_sparsity_zero_equals_dense_and_remove_restores_the_originals(model, tok, code, recording):
    ids = ids_of(tok, code[700])
    dense = model(input_ids=ids).logits
    originals = [m for _, m in find_mlps(model)]
    keys = list(model.state_dict())
    art0 = calibrate(model, tok, [], SparsityConfig(target_sparsity=0.0), recording=recording)
    assert art0.thresholds == [0.0, 0.0]
    for mode in ("static", "dynamic"):
        handle = apply_sparsity(model, art0, mode, prefill="sparse")
        assert all(isinstance(layer.mlp, SparseMLP) for layer in model.model.layers)
        with pytest.raises(UserError, match="already sparsified"):
            apply_sparsity(model, art0)
        diff = (model(input_ids=ids).logits - dense).abs().max().item()
        print(f"{mode} sparsity 0: max |logit diff| = {diff:.2e}")
        assert diff <= 1e-5
        handle.remove()
        handle.remove()  # idempotent
    assert all(layer.mlp is orig for layer, orig in zip(model.model.layers, originals, strict=True))
    assert list(model.state_dict()) == keys
    assert torch.equal(model(input_ids=ids).logits, dense)


@torch.no_grad()
def test_static_thresholds_hit_target_on_held_out_code(model, tok, code, recording):
    for target in (0.5, 0.8):
        art = calibrate(model, tok, [], SparsityConfig(target_sparsity=target), recording=recording)
        res = evaluate_sparsity(model, tok, code[600:640], art, "static", "sparse")
        per_layer = [r["realized_sparsity"] for r in res["layers"]]
        print(f"target {target}: held-out realized {per_layer}, KL {res['kl_mean']:.4f}")
        assert all(abs(s - target) <= 0.02 for s in per_layer)
        assert 0 < res["flops_skipped"] < 2 / 3 * target + 0.02
        assert res["kl_mean"] > 0


@torch.no_grad()
def test_relu_model_calibrates_above_its_natural_sparsity(tok, code):
    relu = llama(tok, act="relu", seed=1)
    art = calibrate(relu, tok, code[200:240], SparsityConfig(target_sparsity=0.8, max_length=128))
    res = evaluate_sparsity(relu, tok, code[600:630], art, "static", "sparse")
    print("relu 0.8 held-out:", [round(r["realized_sparsity"], 4) for r in res["layers"]])
    assert all(abs(r["realized_sparsity"] - 0.8) <= 0.02 for r in res["layers"])


@torch.no_grad()
def test_predictor_meets_recall_target_on_held_out_code(model, tok, code, artifacts):
    val = artifacts.calibration["predictor_validation"]
    res = evaluate_sparsity(model, tok, code[600:640], artifacts, "predictor", "sparse")
    print("validation:", val, "held-out:", [(r["predictor_recall"], r["predictor_precision"]) for r in res["layers"]])
    for row in res["layers"]:  # same 2-point tolerance as the sparsity targets (cut-off set on other tokens)
        assert row["predictor_recall"] >= 0.9 - 0.02
        # better than guessing: a random set of the same size has precision = the true density (0.4)
        assert row["predictor_precision"] > 0.4
    assert res["realized_sparsity"] >= 0.6 - 0.02


@torch.no_grad()
@pytest.mark.parametrize("kernel", ["c", "torch"])
@pytest.mark.parametrize("mode", ["static", "dynamic", "predictor"])
def test_fast_decode_equals_reference_and_teacher_forcing(model, tok, code, artifacts, mode, kernel, monkeypatch):
    from sparsealign.sparse.runtime import kernels

    monkeypatch.setenv("SPARSEALIGN_SPARSE_KERNEL", kernel)
    kernels.load.cache_clear()
    if kernel == "c" and kernels.load() is None:
        pytest.skip("no C compiler here: only the torch kernel can run")
    ids = ids_of(tok, code[650], 40)
    prompt = 8

    def decode(fast: bool):
        with apply_sparsity(model, artifacts, mode, "dense", fast=fast) as h:
            assert h.info["decode_kernel"] == (kernel if fast else None)
            out = model(input_ids=ids[:, :prompt], use_cache=True)
            logits, past = [out.logits[0, -1]], out.cache
            for i in range(prompt, ids.shape[1] - 1):
                out = model(input_ids=ids[:, i:i + 1], cache=past, use_cache=True)
                logits.append(out.logits[0, -1])
                past = out.cache
            return torch.stack(logits), h.trace()

    fast, trace_fast = decode(True)
    ref, trace_ref = decode(False)
    assert (fast - ref).abs().max().item() <= 1e-5
    assert trace_fast["prefill"] == [True] * prompt + [False] * (ids.shape[1] - 1 - prompt)
    assert torch.allclose(torch.tensor(trace_fast["realized_sparsity"]), torch.tensor(trace_ref["realized_sparsity"]))
    assert torch.allclose(torch.tensor(trace_fast["threshold"]), torch.tensor(trace_ref["threshold"]))
    # one teacher-forced forward with a dense prompt prefix == prefill + token-by-token decode
    with apply_sparsity(model, artifacts, mode, "dense") as h, h.dense_prefix(prompt):
        whole = model(input_ids=ids[:, :-1]).logits[0, prompt - 1:]
    assert (whole - ref).abs().max().item() <= 1e-5
    dense = model(input_ids=ids[:, :-1]).logits[0, prompt - 1:]
    assert (dense[1:] - ref[1:]).abs().max().item() > 1e-3  # and it really is sparse
    kernels.load.cache_clear()


@torch.no_grad()
def test_prefill_policy_and_generate(model, tok, code, artifacts):
    ids = ids_of(tok, code[660], 12)
    dense = model(input_ids=ids).logits
    with apply_sparsity(model, artifacts, "dynamic", prefill="dense") as h:
        assert h.info["prefill"] == "dense" and h.info["mode"] == "dynamic"
        assert torch.equal(model(input_ids=ids).logits, dense)  # the prompt ran dense
        h.reset()
        gen = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        trace = h.trace()
    assert gen.shape[1] == ids.shape[1] + 6
    assert trace["prefill"] == [True] * 12 + [False] * 5
    assert all(s == 0 for s in trace["realized_sparsity"][0][:12])
    assert all(s > 0.3 for s in trace["realized_sparsity"][0][12:])
    with apply_sparsity(model, artifacts, "static", prefill="sparse") as h:
        assert (model(input_ids=ids).logits - dense).abs().max().item() > 1e-3


@torch.no_grad()
def test_saved_artifacts_reload_to_identical_outputs(model, tok, code, artifacts, tmp_path):
    save_artifacts(artifacts, tmp_path / "sparsity")
    loaded = load_artifacts(tmp_path / "sparsity")
    assert loaded.thresholds == artifacts.thresholds and loaded.config == artifacts.config
    ids = ids_of(tok, code[670])
    for mode in ("static", "dynamic", "predictor"):
        outs = []
        for art in (artifacts, loaded):
            with apply_sparsity(model, art, mode, "sparse"):
                outs.append(model(input_ids=ids).logits)
        assert torch.equal(outs[0], outs[1]), mode


@torch.no_grad()
def test_greedy_allocation_meets_the_model_wide_target(model, tok, recording, code):
    cfg = SparsityConfig(target_sparsity=0.5, allocation="greedy", greedy_step=0.1)
    art = calibrate(model, tok, [], cfg, recording=recording)
    print("greedy layer sparsity:", art.layer_sparsity)
    assert sum(art.layer_sparsity) / 2 == pytest.approx(0.5)
    res = evaluate_sparsity(model, tok, code[600:620], art, "static", "sparse")
    for row, target in zip(res["layers"], art.layer_sparsity, strict=True):
        assert abs(row["realized_sparsity"] - target) <= 0.02


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_other_llama_family_models(tok, code, family):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    Config, Model = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}[family]
    torch.manual_seed(0)
    model = Model(Config(vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)).eval()
    ids = ids_of(tok, code[680], 24)
    dense = model(input_ids=ids).logits
    originals = [m for _, m in find_mlps(model)]
    art0 = calibrate(model, tok, code[200:210], SparsityConfig(target_sparsity=0.0, max_length=64))
    with apply_sparsity(model, art0, "static", "sparse"):
        assert (model(input_ids=ids).logits - dense).abs().max().item() <= 1e-5
    art = calibrate(model, tok, code[200:230], SparsityConfig(target_sparsity=0.7, max_length=64))
    with apply_sparsity(model, art, "dynamic", "dense") as h:
        model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert h.stats()["layers"][0]["tokens"] == 3  # decode tokens only; the prompt was dense
    assert [m for _, m in find_mlps(model)] == originals
    assert torch.equal(model(input_ids=ids).logits, dense)


@torch.no_grad()
def test_dynamic_holds_target_after_the_weights_change(model, tok, code, recording):
    """Calibrate, then change the MLP weights (a stand-in for an alignment update: +20% gate scale and noise
    on every layer), as when thresholds calibrated on the base model are reused on the aligned one."""
    import copy

    art = calibrate(model, tok, [], SparsityConfig(target_sparsity=0.7), recording=recording)
    changed = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    for layer in changed.model.layers:
        w = layer.mlp.gate_proj.weight
        w.mul_(1.2).add_(0.3 * w.std() * torch.randn(w.shape, generator=g))
    static = evaluate_sparsity(changed, tok, code[600:630], art, "static", "sparse")
    dynamic = evaluate_sparsity(changed, tok, code[600:630], art, "dynamic", "sparse")
    s = [r["realized_sparsity"] for r in static["layers"]]
    d = [r["realized_sparsity"] for r in dynamic["layers"]]
    print(f"after the weight change, target 0.7: static {s}, dynamic {d}")
    assert max(abs(v - 0.7) for v in s) > 0.02
    assert max(abs(v - 0.7) for v in d) <= 0.02
