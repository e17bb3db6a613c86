"""Reward-model judge: an HF sequence-classification model with one output (the reward), and Bradley-Terry training.

Scoring: the text `prompt + response` is tokenised (truncated from the LEFT, so the end of the response -- where the
classifier head reads the last non-pad token -- is always kept) and the single logit is the reward.

Training (`train_reward_model`): the Bradley-Terry objective on preference pairs,

    L = -mean log sigma(r(x, y_w) - r(x, y_l)),

i.e. the negative log-likelihood of the human choice when P(y_w > y_l) = sigma(r_w - r_l).  The base is any HF
checkpoint (`AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)`: a causal-LM checkpoint gets a
freshly initialised score head) or `tiny`, a local Llama from `sparsealign.models.tiny` with a tokenizer trained on
the pairs' text.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsealign.errors import UserError
from sparsealign.io import atomic_dir
from sparsealign.models.loading import load_model_and_tokenizer
from sparsealign.models.tiny import build_llama, train_tokenizer


def bt_loss(r_chosen, r_rejected):
    """Bradley-Terry NLL: -mean log sigma(r_w - r_l); tensors of shape (batch,)."""
    import torch.nn.functional as F

    return -F.logsigmoid(r_chosen - r_rejected).mean()


class RewardScorer:
    """Batched scoring of (prompt, response) texts with a one-logit sequence classifier."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_length: int = 1024):
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        _prepare_tokenizer(model, tokenizer)

    def rewards(self, prompts: Sequence[str], responses: Sequence[str]):
        """Rewards as a (n,) tensor with autograd (used by training)."""
        texts = [p + r for p, r in zip(prompts, responses, strict=True)]
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                               max_length=self.max_length).to(device)
        return self.model(**batch).logits[:, 0]  # (n, 1) -> (n,)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import torch

        out: list[float] = []
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            for s in range(0, len(prompts), self.batch_size):
                out.extend(self.rewards(prompts[s:s + self.batch_size], responses[s:s + self.batch_size]).float()
                           .tolist())
        self.model.train(was_training)
        return out


def _prepare_tokenizer(model: Any, tokenizer: Any) -> None:
    tokenizer.truncation_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id  # the head pools the last non-pad token


def pair_accuracy(scorer: RewardScorer, pairs: Sequence[Any]) -> float:
    """Fraction of pairs with r(chosen) > r(rejected)."""
    prompts = [p.prompt for p in pairs]
    chosen = scorer.score(prompts, [p.chosen for p in pairs])
    rejected = scorer.score(prompts, [p.rejected for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / max(1, len(pairs))


def build_tiny_reward_model(texts: Sequence[str], *, vocab_size: int = 512, seed: int = 0, **model_kwargs):
    """A tokenizer trained on `texts` and a random-init `LlamaForSequenceClassification` (one label)."""
    from transformers import LlamaForSequenceClassification


    tok = train_tokenizer(texts, vocab_size=vocab_size)
    lm = build_llama(len(tok), seed=seed, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, **model_kwargs)
    config = lm.config
    config.num_labels = 1
    model = LlamaForSequenceClassification(config)
    model.model.load_state_dict(lm.model.state_dict())  # same trunk as the tiny LM, fresh score head
    return model, tok


def load_reward_model(path: str, *, device: str = "auto", num_labels: int | None = None):
    """Sequence classifier + tokenizer through the project's one loader (any --model spec); must have one output."""

    model, tokenizer = load_model_and_tokenizer(path, device=device, task="sequence-classification",
                                                num_labels=num_labels)
    if model.config.num_labels != 1:
        raise UserError(f"{path}: the classifier has {model.config.num_labels} outputs; a reward model has 1",
                        hint="use a reward model (num_labels=1)")
    return model, tokenizer


def train_reward_model(
    pairs: Sequence[Any],
    base_model: str | tuple[Any, Any] = "tiny",
    *,
    out_dir: str | Path | None = None,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 512,
    weight_decay: float = 0.0,
    seed: int = 0,
    eval_pairs: Sequence[Any] | None = None,
    device: str = "auto",
    log_every: int = 10,
    tiny_kwargs: dict[str, Any] | None = None,
) -> tuple[Any, Any, dict[str, Any]]:
    """Bradley-Terry training on `pairs`; returns (model, tokenizer, metrics) and saves to `out_dir` if given."""
    import torch

    if not pairs:
        raise UserError("no preference pairs to train the reward model on", hint="pass a non-empty pairs file")
    torch.manual_seed(seed)
    if isinstance(base_model, tuple):
        model, tokenizer = base_model
    elif base_model == "tiny":
        texts = [t for p in pairs for t in (p.prompt + p.chosen, p.prompt + p.rejected)]
        model, tokenizer = build_tiny_reward_model(texts, seed=seed, **(tiny_kwargs or {}))
    else:
        model, tokenizer = load_reward_model(base_model, device="cpu", num_labels=1)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    scorer = RewardScorer(model, tokenizer, batch_size=batch_size, max_length=max_length)
    metrics: dict[str, Any] = {"pairs": len(pairs), "train_accuracy_start": pair_accuracy(scorer, pairs)}
    if eval_pairs:
        metrics["eval_accuracy_start"] = pair_accuracy(scorer, eval_pairs)

    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    step, losses, t0 = 0, [], time.monotonic()
    for epoch in range(epochs):
        order = torch.randperm(len(pairs), generator=gen).tolist()
        for s in range(0, len(order), batch_size):
            batch = [pairs[i] for i in order[s:s + batch_size]]
            prompts = [p.prompt for p in batch]
            # chosen and rejected in ONE forward: (2B,) rewards, first half chosen
            r = scorer.rewards(prompts + prompts, [p.chosen for p in batch] + [p.rejected for p in batch])
            loss = bt_loss(r[: len(batch)], r[len(batch):])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            losses.append(loss.item())
            step += 1
            if log_every and step % log_every == 0:
                print(f"reward-model: epoch {epoch} step {step} loss {sum(losses[-log_every:]) / log_every:.4f}",
                      file=sys.stderr)
    model.eval()
    metrics.update(
        steps=step, epochs=epochs, loss_first=losses[0], loss_last=losses[-1],
        loss_mean_last_epoch=sum(losses[-math.ceil(len(pairs) / batch_size):]) / math.ceil(len(pairs) / batch_size),
        train_accuracy_end=pair_accuracy(scorer, pairs), train_seconds=round(time.monotonic() - t0, 2),
    )
    if eval_pairs:
        metrics["eval_accuracy_end"] = pair_accuracy(scorer, eval_pairs)
    if out_dir is not None:

        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
    return model, tokenizer, metrics
