"""Tokenisation of pairs (truncation policy, chat template, rationale order), sequence scoring, and equality of our
DPO loss with TRL's `DPOTrainer` on the same tiny model and batch."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsealign.align.logps import (
    PairCollator,
    TokenizeSettings,
    encode_pairs,
    rationale_order,
    score_pairs,
    sequence_logps,
)
from sparsealign.align.losses import dpo_loss
from sparsealign.data.preference import load_pairs
from sparsealign.data.records import PreferencePair
from sparsealign.models.tiny import tiny_model_and_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def hh_pairs(data_dir):
    return load_pairs(data_dir / "hh-rlhf/helpful-base/test.jsonl.gz", warn=False).pairs[:200]


@pytest.fixture(scope="module")
def tiny(hh_pairs):
    texts = [p.prompt + p.chosen + p.rejected for p in hh_pairs]
    return tiny_model_and_tokenizer(texts, vocab_size=384, hidden_size=32, num_layers=2, num_heads=2, seed=0)


def test_sequence_logps_equals_unpadded_scoring(tiny, hh_pairs):
    model, tok = tiny
    feats, _ = encode_pairs(tok, hh_pairs[:4], TokenizeSettings(max_length=96, max_prompt_length=48))
    batch = PairCollator(tok.pad_token_id)(feats)
    with torch.no_grad():
        logp, n = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        for i, f in enumerate(feats * 2):
            response = f["chosen_ids"] if i < len(feats) else f["rejected_ids"]
            ids = torch.tensor([f["prompt_ids"] + response])
            full = model(ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
            assert n[i].item() == len(response)
            assert logp[i].item() == pytest.approx(full[len(f["prompt_ids"]) - 1:].sum().item(), abs=1e-3)


def test_truncation_keeps_prompt_end_and_response_start(tiny, hh_pairs):
    _, tok = tiny
    settings = TokenizeSettings(max_length=40, max_prompt_length=16)
    full, n0 = encode_pairs(tok, hh_pairs[:30], TokenizeSettings(max_length=100_000, max_prompt_length=99_999))
    cut, n_cut = encode_pairs(tok, hh_pairs[:30], settings)
    assert n0 == 0
    too_long = sum(len(f["prompt_ids"]) + max(len(f["chosen_ids"]), len(f["rejected_ids"])) > 40 for f in full)
    assert n_cut == too_long > 0
    for a, b in zip(full, cut, strict=True):
        assert len(b["prompt_ids"]) + max(len(b["chosen_ids"]), len(b["rejected_ids"])) <= 40
        assert a["prompt_ids"][-len(b["prompt_ids"]):] == b["prompt_ids"]  # the end of the prompt survives
        assert a["chosen_ids"][: len(b["chosen_ids"])] == b["chosen_ids"]  # the start of each response survives
        assert a["rejected_ids"][: len(b["rejected_ids"])] == b["rejected_ids"]


def test_chat_template_renders_prompt_and_assistant_turn(tiny):
    _, base = tiny
    tok = copy.deepcopy(base)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    pair = PreferencePair(id="x", prompt="How are you?", chosen="Fine.", rejected="Bad.",
                          messages=[{"role": "user", "content": "How are you?"}])
    (f,), _ = encode_pairs(tok, [pair], TokenizeSettings())
    assert tok.decode(f["prompt_ids"]) == "<|user|>How are you?</s><|assistant|>"
    assert tok.decode(f["chosen_ids"]) == "Fine.</s>"
    (g,), _ = encode_pairs(tok, [pair], TokenizeSettings(chat_template=False))
    assert tok.decode(g["prompt_ids"]) == "<s>How are you?" and tok.decode(g["chosen_ids"]) == "Fine.</s>"


def test_rationale_sequence_order_is_seeded_random_and_names_the_winner(tiny):
    _, tok = tiny
    pairs = [PreferencePair(id=f"p{i}", prompt=f"Q{i}?", chosen="GOOD answer", rejected="BAD answer",
                            rationale="it is correct") for i in range(40)]
    settings = TokenizeSettings()
    feats, _ = encode_pairs(tok, pairs, settings, rationale=True)
    firsts = []
    for pair, f in zip(pairs, feats, strict=True):
        ctx = tok.decode(f["rationale_context_ids"])
        chosen_first = ctx.index("GOOD") < ctx.index("BAD")
        assert chosen_first == rationale_order(pair.id, settings)
        assert f"Response {'A' if chosen_first else 'B'} is better" in ctx
        assert tok.decode(f["rationale_ids"]).strip() == "it is correct</s>"
        firsts.append(chosen_first)
    assert 10 < sum(firsts) < 30  # both orders occur
    again, _ = encode_pairs(tok, pairs, settings, rationale=True)
    assert again == feats  # same seed, same order
    fixed, _ = encode_pairs(tok, pairs, TokenizeSettings(randomize_rationale_order=False), rationale=True)
    assert all("Response A is better" in tok.decode(f["rationale_context_ids"]) for f in fixed)


def test_score_pairs_reports_truncation_and_restores_mode(tiny, hh_pairs):
    model, tok = tiny
    model.train()
    out = score_pairs(model, tok, hh_pairs[:6], TokenizeSettings(max_length=48, max_prompt_length=24), batch_size=4)
    assert model.training
    assert out["chosen_logps"].shape == (6,) and (out["chosen_logps"] < 0).all()
    assert int(out["n_truncated"]) > 0 and (out["chosen_n"] > 0).all()


def test_dpo_loss_equals_trl_dpo_trainer(tiny, hh_pairs, tmp_path):
    """TRL computes the loss through its own DPOTrainer.compute_loss on its own collated batch; we score the same
    tensors with `sequence_logps` + `dpo_loss`."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok = tiny
    # float64 weights: TRL's fused LM head still scores in float32, so the two differ only by its rounding
    ref = copy.deepcopy(model).double()
    policy = copy.deepcopy(model).double()
    with torch.no_grad():  # move the policy away from the reference so the loss is not log 2
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    rows = [{"prompt": p.prompt[-120:], "chosen": p.chosen[:60], "rejected": p.rejected[:60]} for p in hh_pairs[:4]]
    args = DPOConfig(output_dir=str(tmp_path), beta=0.3, max_length=256, per_device_train_batch_size=4,
                     report_to="none", use_cpu=True, precompute_ref_log_probs=False, bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    policy.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(policy, batch).item()
        logp, _ = sequence_logps(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        ref_logp, _ = sequence_logps(ref, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    ours = dpo_loss(*logp.chunk(2), *ref_logp.chunk(2), beta=0.3).mean().item()
    assert abs(trl_loss - 0.6931) > 1e-2
    assert ours == pytest.approx(trl_loss, abs=2e-6)
    trl_logps = trainer._metrics["eval"]["logps/chosen"][-1]
    assert logp.chunk(2)[0].mean().item() == pytest.approx(trl_logps, rel=1e-6)


def test_chunked_logps_equal_full_logits_in_value_and_gradient(tiny, hh_pairs, monkeypatch):
    """`sequence_logps` never makes the [N, T, V] logits: the output layer sees one position, the scored positions'
    logits come a few tokens at a time (checkpointed in training).  Values and gradients (of every weight, the
    tied output layer included) equal scoring through the model's full logits."""
    from sparsealign.align import token_logps

    model, tok = tiny
    model = copy.deepcopy(model).double()
    monkeypatch.setattr(token_logps, "CHUNK_ELEMENTS", 7 * model.config.vocab_size)  # 7 tokens per chunk
    feats, _ = encode_pairs(tok, hh_pairs[:3], TokenizeSettings(max_length=64, max_prompt_length=32))
    batch = PairCollator(tok.pad_token_id)(feats)
    ids, attn, scored = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    mask = scored[:, 1:].bool()
    assert mask.sum() > 7 * 3  # several chunks

    shapes = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    logp, _ = sequence_logps(model, ids, attn, scored)
    hook.remove()
    assert shapes[0][1] == 1  # the model's own output layer ran on the last position only
    (logp * torch.arange(1, len(logp) + 1)).sum().backward()  # unequal weights per row: a real gradient
    ours = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()

    full = model(input_ids=ids, attention_mask=attn).logits[:, :-1].log_softmax(-1)
    token = full.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask
    want = token.sum(1)
    (want * torch.arange(1, len(want) + 1)).sum().backward()
    assert torch.allclose(logp.double(), want, rtol=1e-6, atol=0)  # ours: float32 log-probs, as before
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, rtol=1e-5, atol=1e-6), name  # float32 logits vs float64
