"""The greedy KV-cache loop (shared-prefix cache, per-row stop, early exit) gives exactly the tokens of plain HF
`generate` one prompt at a time: on a tiny model with the lm-eval 3-shot MBPP prompt, under a static sparsity patch,
and (marked real_model) on SmolLM2-135M-Instruct."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsealign.data.mbpp.prompts import make_format
from sparsealign.data.mbpp.tasks import load_mbpp
from sparsealign.evaluate.generation import SamplingConfig, generate
from sparsealign.evaluate.greedy import shared_prefix_length
from sparsealign.models.tiny import tiny_model_and_tokenizer
from sparsealign.sparse.calibration.calibrate import calibrate
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime.patch import apply_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mbpp(data_dir):
    tasks = load_mbpp(data_dir / "mbpp" / "mbpp.jsonl")
    fmt = make_format("lm-eval", tasks)
    return tasks, fmt


@pytest.fixture(scope="module")
def peaky(mbpp):
    tasks, _ = mbpp
    model, tok = tiny_model_and_tokenizer([t.code + "\n" + t.text for t in tasks[:300]], vocab_size=512,
                                          hidden_size=48, num_layers=2, num_heads=4, max_position_embeddings=4096)
    peaky = copy.deepcopy(model)
    with torch.no_grad():  # sharpen the random model so greedy decoding does not repeat one token
        for p in peaky.parameters():
            p.mul_(8)
    return peaky, tok


def _prompts(mbpp, n, start=10):
    tasks, fmt = mbpp
    return [fmt.prompt(t) for t in tasks[start:start + n]]


def _ids(gens):
    return [g[0].completion_ids for g in gens]


def test_shared_prefix_length_leaves_every_prompt_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 0


def test_cached_batched_greedy_equals_hf_generate_one_prompt_at_a_time(peaky, mbpp):
    model, tok = peaky
    prompts = _prompts(mbpp, 7)
    encoded = [tok(p)["input_ids"] for p in prompts]
    assert shared_prefix_length(encoded) > 300  # the 3-shot block is shared
    stop = ("two", "ul")  # frequent in this model's output: rows stop at different steps
    ours = generate(model, tok, prompts, SamplingConfig(max_new_tokens=40, batch_size=3), stop=stop)
    plain = generate(model, tok, prompts, SamplingConfig(max_new_tokens=40, batch_size=1, prefix_cache=False),
                     stop=stop)
    assert _ids(ours) == _ids(plain)
    assert [g[0].text for g in ours] == [g[0].text for g in plain]
    lengths = {len(c) for c in _ids(ours)}
    assert len(lengths) > 1 and min(lengths) < 40  # some rows stopped early and left their batch


def _count_prefills(model):
    """Forward pre-hook counting multi-token calls (a group of prompts prefilled), as a list of one int."""
    count = [0]

    def hook(_module, _args, kwargs):
        count[0] += int(kwargs["input_ids"].shape[1] > 1)

    return count, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_rows_that_join_a_running_batch_decode_as_they_do_alone(peaky, mbpp):
    """Continuous batching: prompts waiting for a slot are prefilled as a group and join the running batch (every
    row's cache re-laid into one width), and every row's tokens are still the ones it decodes alone."""
    model, tok = peaky
    prompts = _prompts(mbpp, 12, start=100)
    stop = ("two", "ul", "(")
    count, handle = _count_prefills(model)
    try:
        batched = _ids(generate(model, tok, prompts, SamplingConfig(max_new_tokens=40, batch_size=4), stop=stop))
    finally:
        handle.remove()
    alone = [_ids(generate(model, tok, [p], SamplingConfig(max_new_tokens=40), stop=stop))[0] for p in prompts]
    assert batched == alone
    assert len({len(ids) for ids in batched}) > 3  # rows ended at different steps ...
    assert count[0] > 1 + 12 // 4  # ... and waiting prompts joined the running batch in more, smaller groups


@pytest.mark.parametrize("batch_size", [5, 2])  # 2: rows join a running batch
def test_batched_greedy_under_a_static_sparsity_patch_equals_each_prompt_alone(peaky, mbpp, batch_size):
    model, tok = peaky
    model = copy.deepcopy(model)
    tasks, _ = mbpp
    art = calibrate(model, tok, [t.code for t in tasks[300:340]], SparsityConfig(target_sparsity=0.5))
    prompts = _prompts(mbpp, 5, start=40)
    cfg = SamplingConfig(max_new_tokens=24, batch_size=batch_size)
    with apply_sparsity(model, art, "static", prefill="sparse") as handle:
        batched = _ids(generate(model, tok, prompts, cfg, stop=("[DONE]",)))
        alone = [_ids(generate(model, tok, [p], cfg, stop=("[DONE]",)))[0] for p in prompts]
        assert handle.stats()["realized_sparsity"] > 0.3
    assert batched == alone
    dense = _ids(generate(model, tok, prompts, cfg, stop=("[DONE]",)))
    assert dense != batched  # the patch was really active


@pytest.mark.real_model
def test_smollm2_cached_batched_greedy_equals_plain_generate_on_mbpp(smollm2, mbpp):
    model, tok = smollm2
    prompts = _prompts(mbpp, 3)
    ours = generate(model, tok, prompts, SamplingConfig(max_new_tokens=48, batch_size=3), stop=("[DONE]",))
    plain = generate(model, tok, prompts, SamplingConfig(max_new_tokens=48, batch_size=1, prefix_cache=False),
                     stop=("[DONE]",))
    assert _ids(ours) == _ids(plain)
    assert all(len(ids) > 5 for ids in _ids(ours))


def test_generation_config_processors_are_honoured_by_falling_back_to_hf_generate(peaky, mbpp):
    model, tok = peaky
    model = copy.deepcopy(model)
    prompts = _prompts(mbpp, 2, start=60)
    cfg = SamplingConfig(max_new_tokens=16, batch_size=2)
    plain = _ids(generate(model, tok, prompts, cfg))
    model.generation_config.repetition_penalty = 3.0
    penalised = _ids(generate(model, tok, prompts, cfg))
    assert penalised == _ids(generate(model, tok, prompts, cfg.model_copy(update={"prefix_cache": False})))
    assert penalised != plain
