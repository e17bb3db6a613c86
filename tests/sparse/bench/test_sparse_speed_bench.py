"""`sparsify bench` smoke tests: the JSON contract and the bookkeeping behind it (no timed assertions here; the
speed goals live in benchmarks/sparse_decode.py)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_one_line_error
from sparsealign.sparse.bench.speed import ModuleTimer, build_preset, local_texts, timed_decode

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROW_KEYS = {"mode", "sparsity", "dense_tokens_per_s", "sparse_tokens_per_s", "speedup", "ideal_speedup"}




@pytest.mark.slow
def test_bench_cli_json_rows(cli):
    res = cli("sparsify", "bench", "--preset", "tiny-relu", "--sparsity", "0.5,0.9", "--modes",
              "static,dynamic,predictor", "--tokens", "6", "--repeats", "1", "--threads", "1",
              "--extrapolate-layers", "4", "--json")
    assert res.returncode == 0, res.stderr
    out = res.json()
    rows = out["results"]
    assert [(r["mode"], r["sparsity"]) for r in rows] == [
        (m, s) for s in (0.5, 0.9) for m in ("static", "dynamic", "predictor")]
    for r in rows:
        assert r.keys() >= ROW_KEYS
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ROW_KEYS - {"mode"})
        assert r["speedup"] == pytest.approx(r["sparse_tokens_per_s"] / r["dense_tokens_per_s"])
        # Amdahl: skipping FFN work can never more than remove the FFN share of the time
        share = r["ffn_share_dense"]
        assert 0 < share < 1 and 1.0 <= r["amdahl_speedup"] <= 1.0 / (1.0 - share) + 1e-9
        assert r["ffn_ideal_speedup"] == pytest.approx(1.0 / (1.0 - r["ffn_bytes_skipped"]))
        assert r["ideal_speedup"] > 1.0 and r["dense_fraction_of_roofline"] > 0
        assert r["extrapolated_layers"] == 4 and r["extrapolated_speedup"] > 0
    static = {r["sparsity"]: r for r in rows if r["mode"] == "static"}
    # the gate stays dense in static mode: at most 2/3 of the FFN FLOPs can be skipped
    assert 0 < static[0.5]["flops_skipped"] < static[0.9]["flops_skipped"] <= 2 / 3
    assert out["batch_size"] == 1 and out["dtype"] == "float32" and out["threads"] == 1


def test_bench_cli_bad_input(cli, tmp_path):
    assert_one_line_error(cli("sparsify", "bench", "--json"), "--model", "--preset")
    assert_one_line_error(cli("sparsify", "bench", "--preset", "tiny-relu", "--sparsity", "0.5,x"), "--sparsity")
    assert_one_line_error(cli("sparsify", "bench", "--preset", "tiny-relu", "--modes", "turbo"), "turbo")
    assert_one_line_error(cli("sparsify", "bench", "--model", str(tmp_path)), "config.json")


@pytest.mark.slow
def test_decode_is_greedy_with_kv_cache_and_timers_count_mlp_time():
    from sparsealign.models.tiny import train_tokenizer

    model = build_preset("tiny-relu")
    tok = train_tokenizer(local_texts(8), 512)
    prompt = tok("def timed_decode(model", return_tensors="pt").input_ids
    run = timed_decode(model, prompt, 5)
    with torch.no_grad():  # the same tokens as a full no-cache greedy recomputation
        ids = prompt
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert run["ids"] == ids[0, prompt.shape[1]:].tolist()
    assert 0 < run["ffn"] < run["layers"] < run["total"]

    timer = ModuleTimer([model.model.layers[0].mlp])
    model(prompt)  # not counted while off
    assert timer.seconds == 0.0
    timer.on = True
    model(prompt)
    timer.remove()
    assert timer.seconds > 0 and not model.model.layers[0].mlp._forward_hooks


def test_preset_shapes_and_weights():
    model = build_preset("tiny-relu", num_layers=3)
    cfg = model.config
    assert (cfg.hidden_act, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == ("relu", 3, 256, 1024)
    w = [layer.mlp.gate_proj.weight for layer in model.model.layers]
    assert not torch.equal(w[0], w[1]) and abs(float(w[0].std()) - 0.02) < 0.002
    assert torch.equal(model.model.norm.weight, torch.ones(256))
