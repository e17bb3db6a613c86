"""Continuous MBPP metrics on a tiny real ReLU LLaMA and the real MBPP test split: reference NLL, KL, zeros."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from sparsealign.data.mbpp.prompts import lm_eval_query
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.evaluate.mbpp.likelihood import (
    CachedModel,
    code_likelihood,
    encode_pair,
    reference_kl,
    reference_nll,
    reference_parts,
    reference_text,
)
from sparsealign.models.tiny import tiny_model_and_tokenizer
from sparsealign.sparse.calibration.calibrate import calibrate
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime.patch import apply_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sparse_kl(dense, sparse, tok, tasks, **kw):
    """KL(dense || sparse) as the study asks for it: the sparse model's pass, the dense side as `kl_from`."""
    return code_likelihood(sparse, tok, tasks, kl_from={"sparse_kl": dense}, **kw)["sparse_kl"]


def natural_sparsity(model, tok, tasks, **kw):
    return code_likelihood(model, tok, tasks, zeros=True, **kw)["natural_sparsity"]


@pytest.fixture(scope="module")
def tasks(data_dir):
    return load_mbpp(split="test")[:24]


@pytest.fixture(scope="module")
def tiny(tasks):
    texts = [lm_eval_query(t) + reference_text(t) for t in load_mbpp(split="train")[:80]]
    model, tok = tiny_model_and_tokenizer(texts, vocab_size=300, hidden_size=32, num_layers=2, num_heads=2,
                                          intermediate_size=64, hidden_act="relu", seed=0,
                                          max_position_embeddings=1024)
    return model.eval(), tok


def test_nll_is_batch_invariant(tiny, tasks):
    model, tok = tiny
    one = reference_nll(model, tok, tasks, batch_size=1, n_resamples=200)
    sixteen = reference_nll(model, tok, tasks, batch_size=16, n_resamples=200)
    assert one.tokens.tolist() == sixteen.tokens.tolist()
    np.testing.assert_allclose(one.values, sixteen.values, rtol=0, atol=1e-5)
    assert one.values.std() > 0  # tasks differ: not a constant
    assert len(one.values) == len(tasks) and one.summary["n"] == len(tasks)
    assert one.summary["low"] < one.summary["estimate"] < one.summary["high"]


def test_nll_matches_a_direct_computation(tiny, tasks):
    """Score one task by hand: one unpadded forward, log-softmax, the continuation's tokens."""
    model, tok = tiny
    task = tasks[3]
    ctx, tgt = encode_pair(tok, lm_eval_query(task), reference_text(task))
    assert tok.decode(tgt).startswith("\n") and tok.decode(tgt).endswith("[DONE]")  # lm-eval moves the "\n" over
    ids = torch.tensor([ctx + tgt])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    expected = -np.mean([float(logp[len(ctx) + j - 1, tok_id]) for j, tok_id in enumerate(tgt)])
    got = reference_nll(model, tok, [tasks[0], task, tasks[5]], batch_size=3, n_resamples=0)
    assert got.tokens[1] == len(tgt)
    assert got.values[1] == pytest.approx(expected, abs=1e-5)


def test_kl_of_a_model_with_itself_is_zero_and_positive_against_another(tiny, tasks):
    model, tok = tiny
    same = reference_kl(model, model, tok, tasks[:8], n_resamples=0)
    assert np.abs(same.values).max() < 1e-6
    other = _copy_perturbed(model)  # stands in for an aligned model: same tokenizer, other weights
    cost = reference_kl(other, model, tok, tasks[:8], name="alignment_kl", n_resamples=0)
    assert (cost.values > 1e-4).all() and cost.name == "alignment_kl"


def _copy_perturbed(model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return other


def test_threshold_zero_gives_kl_zero_and_a_real_threshold_does_not(tiny, tasks):
    model, tok = tiny
    dense = _copy_perturbed(model)  # any ReLU model; a separate object stays dense
    sparse = _copy_perturbed(model)
    texts = [reference_text(t) for t in load_mbpp(split="train")[:16]]
    art = calibrate(sparse, tok, texts, SparsityConfig(target_sparsity=0.9))
    with apply_sparsity(sparse, art, "static", "sparse", thresholds=[0.0] * art.num_layers):
        zero = sparse_kl(dense, sparse, tok, tasks[:8], n_resamples=0)
    assert np.abs(zero.values).max() < 1e-6
    with apply_sparsity(sparse, art, "static", "sparse"):
        cut = sparse_kl(dense, sparse, tok, tasks[:8], n_resamples=0)
    assert cut.summary["estimate"] > 1e-3


def test_natural_sparsity_counts_relu_zeros_and_ignores_padding(tiny, tasks):
    model, tok = tiny
    one = natural_sparsity(model, tok, tasks[:10], batch_size=1, n_resamples=0)
    padded = natural_sparsity(model, tok, tasks[:10], batch_size=10, n_resamples=0)
    np.testing.assert_allclose(one.values, padded.values, atol=1e-12)  # padding would add (or drop) zeros
    assert 0.05 < one.summary["estimate"] < 0.95
    # by hand for one task: every layer's relu(gate(x)) over its tokens
    (ctx, tgt), = reference_parts(tok, tasks[:1])[0]
    acts = []
    hooks = [layer.mlp.act_fn.register_forward_hook(lambda m, i, o: acts.append(o)) for layer in model.model.layers]
    with torch.no_grad():
        model(input_ids=torch.tensor([ctx + tgt]))
    for h in hooks:
        h.remove()
    expected = sum(int((a == 0).sum()) for a in acts) / sum(a.numel() for a in acts)
    assert one.values[0] == pytest.approx(expected, abs=1e-12)


def test_one_pass_gives_the_separate_metrics(tiny, tasks):
    model, tok = tiny
    other = _copy_perturbed(model)
    both = code_likelihood(model, tok, tasks[:6], kl_to={"alignment_kl": other}, kl_from={"sparse_kl": other},
                           zeros=True, n_resamples=0)
    assert set(both) == {"reference_nll", "alignment_kl", "sparse_kl", "natural_sparsity"}
    np.testing.assert_allclose(both["reference_nll"].values, reference_nll(model, tok, tasks[:6]).values, atol=1e-9)
    np.testing.assert_allclose(both["alignment_kl"].values, reference_kl(model, other, tok, tasks[:6]).values,
                               atol=1e-9)
    np.testing.assert_allclose(both["sparse_kl"].values, sparse_kl(other, model, tok, tasks[:6]).values, atol=1e-9)
    assert not np.allclose(both["sparse_kl"].values, both["alignment_kl"].values)  # KL is not symmetric


def test_a_cached_model_gives_the_kl_of_the_model_itself(tiny, tasks):
    """The study's dense cell keeps its vocabulary-projection inputs; a sparse (or aligned) cell's KL against it
    from those equals the KL against the model run again, and inputs saved for other items are refused."""
    model, tok = tiny
    sparse = _copy_perturbed(model)
    texts = [reference_text(t) for t in load_mbpp(split="train")[:16]]
    art = calibrate(sparse, tok, texts, SparsityConfig(target_sparsity=0.7))
    hidden: list = []
    dense = code_likelihood(model, tok, tasks[:10], hidden=hidden, n_resamples=0, batch_size=4)
    assert [len(h) for h in hidden] == dense["reference_nll"].tokens.tolist()
    cached = CachedModel(model.lm_head.weight.detach(), None, hidden)
    with apply_sparsity(sparse, art, "static", "sparse"):
        direct = code_likelihood(sparse, tok, tasks[:10], kl_from={"sparse_kl": model}, n_resamples=0, batch_size=4)
        saved = code_likelihood(sparse, tok, tasks[:10], kl_from={"sparse_kl": cached}, n_resamples=0, batch_size=4)
        assert direct["sparse_kl"].summary["estimate"] > 1e-3
        np.testing.assert_allclose(saved["sparse_kl"].values, direct["sparse_kl"].values, rtol=1e-5, atol=1e-7)
        with pytest.raises(ValueError, match="other items"):
            code_likelihood(sparse, tok, tasks[1:11], kl_from={"sparse_kl": cached}, n_resamples=0)
