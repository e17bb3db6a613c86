"""Batched generation: greedy through our own KV-cache loop (`greedy.greedy_decode`: the shared prompt prefix run
once, continuous batching; the tokens equal plain `model.generate` one prompt at a time, tested), sampling through
HF `generate`.

Sampling: HF `generate` with left padding; each batch reseeds torch with `seed + batch index`, so a run is
reproducible for a given batch size.  Prompts are sorted by length before batching (less padding) and results are
returned in the caller's order.  Prompts longer than the model's context minus `max_new_tokens` are cut from the
left (as lm-evaluation-harness does) and flagged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import Field, model_validator

from sparsealign.config import StrictModel
from sparsealign.evaluate.greedy import greedy_decode
from sparsealign.evaluate.mbpp.extract import truncate_at_stop

log = logging.getLogger("sparsealign.evaluate")


class SamplingConfig(StrictModel):
    """How completions are drawn. temperature 0 means greedy decoding (then n must be 1)."""

    n: int = Field(1, ge=1, description="completions per prompt")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # 256 = lm-eval's max_gen_toks (its mbpp task sets none): 512 doubled the cost of every row that never stops
    max_new_tokens: int = Field(256, ge=1)
    # greedy: rows decoded at once, finished rows replaced by waiting prompts (continuous batching), so a wide batch
    # costs nothing when one row runs to the limit; sampling: prompts per generate call (each yields n sequences)
    batch_size: int = Field(32, ge=1, description="greedy: rows decoded at once (continuous batching); sampling: "
                                                  "prompts per generate call (each yields n sequences)")
    seed: int = 0
    prefix_cache: bool = Field(True, description="greedy: run the prompts' shared prefix once (False: HF generate)")

    @model_validator(mode="after")
    def _greedy_is_single(self) -> SamplingConfig:
        if self.temperature == 0.0 and self.n > 1:
            raise ValueError("n > 1 needs sampling: set temperature > 0 (greedy decoding gives n identical samples)")
        return self


@dataclass
class Generation:
    text: str  # decoded completion, special tokens removed, cut at the first stop string
    completion_ids: list[int]  # sampled token ids up to and including the first EOS
    prompt_ids: list[int]  # the (possibly left-truncated) prompt as fed to the model
    prompt_truncated: bool


def _context_length(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    for i, tok in enumerate(ids):
        if tok in eos:
            return ids[: i + 1]
    return ids


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    if ids is None:
        return set()
    return set(ids) if isinstance(ids, (list, tuple)) else {int(ids)}


def _stop_window(stop: Sequence[str]) -> int:
    return max(len(s) for s in stop) + 8  # tokens: every token decodes to >= 1 character or a byte piece


def _row_stop(tokenizer, stop: Sequence[str]) -> Callable[[list[int]], bool]:
    """Per-row stop test on the decoded tail of the completion (same window as `_stop_criteria`)."""
    if not stop:
        return lambda ids: False
    window = _stop_window(stop)
    return lambda ids: any(s in tokenizer.decode(ids[-window:], skip_special_tokens=True) for s in stop)


def _stop_criteria(tokenizer, stop: Sequence[str]):
    """Per-row stop on decoded text: checks only the last few tokens each step, where a new stop string can appear.

    (HF's `stop_strings` precomputes a table over the whole vocabulary on every call: seconds per call.)
    """
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    window = _stop_window(stop)

    class _TailStop(StoppingCriteria):
        start = 0  # prompt width of the current batch, set before each generate call

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            lo = max(self.start, input_ids.shape[1] - window)
            tails = tokenizer.batch_decode(input_ids[:, lo:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in tails], device=input_ids.device)

    return StoppingCriteriaList([_TailStop()])


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    cfg: SamplingConfig,
    *,
    stop: Sequence[str] = (),
    progress: bool = False,
) -> list[list[Generation]]:
    """`cfg.n` completions for each prompt, in prompt order: result[i][j] is sample j of prompt i."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    return generate_from_ids(model, tokenizer, encoded, cfg, stop=stop, progress=progress)


def generate_from_ids(
    model,
    tokenizer,
    encoded: Sequence[list[int]],
    cfg: SamplingConfig,
    *,
    stop: Sequence[str] = (),
    progress: bool = False,
) -> list[list[Generation]]:
    """Like `generate`, from already tokenised prompts (so a caller can score exactly the ids it sampled from)."""
    import torch
    from tqdm import tqdm


    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = _eos_ids(model, tokenizer)
    ctx = _context_length(model)
    max_prompt = None if ctx is None else ctx - cfg.max_new_tokens
    if max_prompt is not None and max_prompt < 1:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in a {ctx}-token context")

    truncated = [max_prompt is not None and len(ids) > max_prompt for ids in encoded]
    encoded = [list(ids[-max_prompt:]) if cut else list(ids) for ids, cut in zip(encoded, truncated, strict=True)]
    if any(truncated):
        log.warning("%d of %d prompts were longer than %s tokens and were cut from the left",
                    sum(truncated), len(encoded), max_prompt)

    results: list[list[Generation]] = [[] for _ in encoded]
    sampling = cfg.temperature > 0
    if not sampling and cfg.prefix_cache and _plain_greedy(model):
        completions = greedy_decode(model, encoded, max_new_tokens=cfg.max_new_tokens, eos=eos, pad_id=pad_id,
                                    stop=_row_stop(tokenizer, stop), batch_size=cfg.batch_size, progress=progress)
        for i, ids in enumerate(completions):
            text = truncate_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
            results[i].append(Generation(text, ids, list(encoded[i]), truncated[i]))
        return results
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    gen_kwargs = {"max_new_tokens": cfg.max_new_tokens, "do_sample": sampling, "num_return_sequences": cfg.n,
                  "pad_token_id": pad_id}
    if sampling:
        gen_kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
    if stop:
        gen_kwargs["stopping_criteria"] = _stop_criteria(tokenizer, stop)
    batches = [order[i: i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    for b, batch in enumerate(tqdm(batches, desc="generate", disable=not progress, leave=False)):
        width = max(len(encoded[i]) for i in batch)
        # (batch, width) left-padded ids and mask: the last prompt token of every row sits at column width-1
        input_ids = torch.tensor([[pad_id] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch], device=device)
        torch.manual_seed(cfg.seed + b)
        if stop:
            gen_kwargs["stopping_criteria"][0].start = width
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=mask, **gen_kwargs)
        new_tokens = out[:, width:].tolist()  # (batch * n, new) rows grouped by prompt
        for row, ids in enumerate(new_tokens):
            i = batch[row // cfg.n]
            ids = _until_eos(ids, eos)
            while ids and ids[-1] == pad_id and pad_id not in eos:  # rows that stopped early are padded
                ids.pop()
            text = truncate_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stop)
            results[i].append(Generation(text, ids, list(encoded[i]), truncated[i]))
    return results


# generation_config fields that change greedy decoding (HF turns them into logits processors): with any of them
# set, greedy decoding goes through HF generate, which applies them
_PROCESSORS = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0, "min_length": 0,
               "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
               "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None}


def _plain_greedy(model) -> bool:
    gen = getattr(model, "generation_config", None)
    return gen is None or all(getattr(gen, k, None) in (None, neutral) for k, neutral in _PROCESSORS.items())
