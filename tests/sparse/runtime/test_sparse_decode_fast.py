"""The static-KV decode loop, the new kernels (gate pre-check, column-sparse matvec) and the roofline byte count,
each against a dense torch / Hugging Face reference.  No timed assertions (speed goals live in benchmarks/)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparsealign.sparse.bench.roofline import roofline_fields, step_bytes
from sparsealign.sparse.bench.speed import build_preset, local_texts
from sparsealign.sparse.bench.teal import TealOps, calibrate_teal, teal_masked
from sparsealign.sparse.calibration.calibrate import calibrate
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime import kernels
from sparsealign.sparse.runtime.decode import Decoder, DenseOps, PatchedOps, greedy
from sparsealign.sparse.runtime.fastpath import NeuronMajor, quantize_rows
from sparsealign.sparse.runtime.patch import apply_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")
LIB = kernels.load()
needs_c = pytest.mark.skipif(LIB is None, reason="no C compiler for the sparse kernels")


@pytest.fixture(scope="module")
def stories(data_dir):
    from sparsealign.models.llama2c import read_checkpoint, to_hf_model
    from sparsealign.models.llama2c_tokenizer import build_hf_tokenizer, read_tokenizer

    root = data_dir / "models" / "stories260K"
    cfg, weights = read_checkpoint(root / "stories260K.bin")
    return to_hf_model(cfg, weights).eval(), build_hf_tokenizer(*read_tokenizer(root / "tok512.bin"))


@pytest.fixture(scope="module")
def code(data_dir):
    return [json.loads(line)["code"] for line in (data_dir / "mbpp" / "mbpp.jsonl").open()]


@torch.no_grad()
def hf_greedy(model, prompt: torch.Tensor, tokens: int) -> list[int]:
    ids = prompt
    for _ in range(tokens + 1):  # full recomputation, no cache
        ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    return ids[0, prompt.shape[1]:].tolist()


@torch.no_grad()
def test_decoder_matches_hf_on_relu_preset_and_real_swiglu_weights(stories):
    prompt = torch.tensor([[1, 5, 9, 33, 100, 7, 42]])
    for model in (build_preset("tiny-relu"), stories[0]):
        assert greedy(model, prompt, 8) == hf_greedy(model, prompt, 8)
        dec = Decoder(model, DenseOps(model), max_len=16)
        first = dec.prefill(prompt[0])
        assert torch.allclose(first, model(prompt).logits[0, -1], atol=1e-4)
        step = dec.step(int(first.argmax()))
        ref = model(torch.cat([prompt, first.argmax().view(1, 1)], 1)).logits[0, -1]
        assert torch.allclose(step, ref, atol=1e-4)


@needs_c
@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize(("hidden", "inter"), [(192, 700), (190, 701)])  # interleaved int8 / row-major
def test_gate_precheck_keeps_every_active_row_and_their_exact_values(act, hidden, inter):
    gen = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(hidden, inter, bias=False)
    torch.nn.init.normal_(lin.weight, 0.0, 0.05, generator=gen)
    mlp = torch.nn.Module()
    mlp.gate_proj, mlp.up_proj, mlp.down_proj = lin, torch.nn.Linear(hidden, inter, bias=False), torch.nn.Linear(inter, hidden, bias=False)
    mlp.act_fn = torch.nn.ReLU() if act == "relu" else torch.nn.SiLU()
    nm = NeuronMajor(mlp, precheck=True)
    assert nm.q8 is not None
    q8 = quantize_rows(lin.weight)
    assert q8.interleaved == (hidden % 32 == 0 and inter % 4 == 0)
    q, scale, err, qnorm = q8.rows(), q8.scale, q8.err, q8.qnorm
    assert torch.equal(q, torch.round(lin.weight / scale[:, None]).clamp(-127, 127).to(torch.int8))
    assert torch.all(err <= scale * math.sqrt(hidden) / 2 + 1e-7)  # rounding error <= half a step per entry
    assert torch.allclose(qnorm, torch.linalg.vector_norm(q.float() * scale[:, None], dim=1))
    for seed in range(3):
        x = torch.randn(hidden, generator=torch.Generator().manual_seed(seed))
        a_ref = mlp.act_fn(lin(x)).detach()
        for floor in (0.05, 0.2, 0.5):
            t = float(a_ref.abs().quantile(0.9)) if floor == 0.5 else floor
            nm = NeuronMajor(mlp, precheck=True)  # fresh: no memory of earlier candidate fractions
            a = nm.gate(x, t)
            keep = a_ref.abs() > t
            assert torch.allclose(a[keep], a_ref[keep], atol=1e-5)  # every active row is computed exactly
            assert torch.all(a[~keep].abs() <= t + 1e-5)  # skipped rows could not have been active
            if floor == 0.5:  # at 90% sparsity fewer bytes than the dense gate's are read
                assert nm.bytes_read < 0.6 * inter * hidden * 4
    # the fast path with the pre-check gives the masked dense MLP
    x = torch.randn(hidden)
    a = nm.gate(x, 0.3)
    y, kept = nm.from_gate(x, a, a.abs(), 0.3)
    a_ref = mlp.act_fn(lin(x)).detach()
    mask = (a_ref.abs() > 0.3).float()
    ref = mlp.down_proj(a_ref * mlp.up_proj(x) * mask).detach()
    assert kept == int(mask.sum()) and torch.allclose(y, ref, atol=1e-5)


@needs_c
def test_colsparse_kernel_and_torch_fallback_match_dense_matvec():
    from sparsealign.sparse.bench.teal import _ColSparse

    gen = torch.Generator().manual_seed(1)
    w, b = torch.randn(300, 130, generator=gen), torch.randn(300, generator=gen)
    op = _ColSparse([w], [b])
    for frac in (0.0, 0.3, 1.0):
        x = torch.randn(130, generator=gen)
        t = float(x.abs().quantile(frac)) if frac > 0 else 0.0
        ref = w @ (x * (x.abs() > t)) + b
        for lib in (LIB, None):
            y, k = op(x, t, lib)
            assert k == int((x.abs() > t).sum()) and torch.allclose(y, ref, atol=1e-4)
    for threads in (1, 2):  # the output split between threads covers every column
        idx = torch.tensor([3, 7, 129])
        v = torch.tensor([1.0, -2.0, 0.5])
        got = kernels.colsparse(LIB, op.wt, idx, v, threads)
        assert torch.allclose(got, w[:, idx] @ v, atol=1e-4)


@torch.no_grad()
def test_threshold_zero_sparse_decode_gives_the_dense_greedy_tokens(stories, code):
    model, tok = stories
    prompt = tok(code[30], return_tensors="pt")["input_ids"][:, :24]
    dense = greedy(model, prompt, 12)
    art0 = calibrate(model, tok, code[600:604], SparsityConfig(target_sparsity=0.0, max_length=64))
    for mode in ("static", "dynamic"):
        with apply_sparsity(model, art0, mode, "dense", fast=True):
            assert greedy(model, prompt, 12, PatchedOps(model)) == dense
    zero = {site: [0.0] * len(model.model.layers) for site in ("qkv", "o", "gate_up", "down")}
    assert greedy(model, prompt, 12, TealOps(model, zero)) == dense


@torch.no_grad()
def test_teal_decode_equals_the_masked_reference_and_reads_fewer_bytes(stories, code):
    from transformers import DynamicCache

    model, tok = stories
    th = calibrate_teal(model, tok, code[600:620], 0.5)
    assert set(th) == {"qkv", "o", "gate_up", "down"} and all(t > 0 for ts in th.values() for t in ts)
    ids = tok(code[20], return_tensors="pt")["input_ids"][0, :20]
    dec = Decoder(model, TealOps(model, th), 32)
    dec.prefill(ids[:10])
    dec.reset_counters()
    got = torch.stack([dec.step(int(t)) for t in ids[10:]])
    cache = DynamicCache()
    model(input_ids=ids[None, :10], cache=cache, use_cache=True)
    with teal_masked(model, th):
        ref = model(input_ids=ids[None, 10:], cache=cache, use_cache=True).logits[0]
    assert (got - ref).abs().max() < 1e-3
    dense_proj = sum(4 * p.numel() for n, p in model.model.layers.named_parameters() if "proj" in n)
    assert dec.ops.bytes_read < 0.75 * 10 * dense_proj  # ~half the inputs kept at every site


@torch.no_grad()
def test_roofline_bytes_match_the_parameter_count():
    model = build_preset("tiny-relu", num_layers=3)
    cfg = model.config
    dec = Decoder(model, DenseOps(model), max_len=16)
    dec.prefill(torch.tensor([1, 2, 3]))
    dec.reset_counters()
    for t in (4, 5):
        dec.step(t)
    # hand count: every parameter except the embedding table, plus one embedding row, plus K and V read so far
    weights = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n) + cfg.hidden_size
    kv = [2 * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * n * 3 for n in (4, 5)]
    assert dec.bytes_read == 4 * (2 * weights + sum(kv))
    dims = dict(hidden=256, inter=1024, layers=3, heads=4, kv_heads=2, head_dim=64, vocab=512)
    assert dec.bytes_read == step_bytes(**dims, pos=3) + step_bytes(**dims, pos=4)
    f = roofline_fields({"total": 0.02, "bytes": 4e8}, {"total": 0.01, "bytes": 1e8}, 40.0)
    assert f["dense_roofline_tokens_per_s"] == pytest.approx(100.0)
    assert f["dense_fraction_of_roofline"] == pytest.approx(0.5)
    assert f["ideal_speedup"] == pytest.approx(4.0) and f["fraction_of_ideal"] == pytest.approx(0.5)
    assert f["sparse_overhead_ms_per_token"] == pytest.approx(7.5)


def test_bench_json_rows_carry_roofline_fields(cli):
    res = cli("sparsify", "bench", "--preset", "tiny-relu", "--sparsity", "0.9", "--modes", "static,predictor",
              "--tokens", "4", "--repeats", "1", "--threads", "1", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    assert out["bandwidth_gb_per_s"] > 0 and out["decoder"] == "static-kv"
    for r in out["results"]:
        assert r.keys() >= {"mode", "sparsity", "dense_tokens_per_s", "sparse_tokens_per_s", "speedup",
                            "ideal_speedup", "dense_fraction_of_roofline", "sparse_fraction_of_roofline"}
        assert min(r["dense_fraction_of_roofline"], r["sparse_fraction_of_roofline"]) > 0
        assert r["sparse_mb_per_token"] < r["dense_mb_per_token"]
        assert r["ideal_speedup"] == pytest.approx(r["dense_mb_per_token"] / r["sparse_mb_per_token"])
        assert 0 <= r["top1_agreement"] <= 1 and r["kl_mean"] >= 0
    assert local_texts(1)
