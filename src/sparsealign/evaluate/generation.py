"""Batched generation: greedy through our own KV-cache loop (`greedy_decode`), sampling through HF `generate`.

Greedy (the MBPP pass@1 path): the prompts' shared token prefix (the 3-shot block of the lm-eval prompt) is run
once and its KV cache copied into every batch; each batch row is laid out as [prefix][pads][own suffix] with the
pads masked out and explicit position ids that skip them, so every row sees exactly its unpadded prompt.  Rows stop
on EOS or a stop string (per row) and leave the batch at once (their cache rows are dropped), so a batch costs what
its remaining rows need.  The tokens equal plain `model.generate` one prompt at a time (tested).

Sampling: HF `generate` with left padding; each batch reseeds torch with `seed + batch index`, so a run is
reproducible for a given batch size.  Prompts are sorted by length before batching (less padding) and results are
returned in the caller's order.  Prompts longer than the model's context minus `max_new_tokens` are cut from the
left (as lm-evaluation-harness does) and flagged.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import Field, model_validator

from sparsealign.config import StrictModel
from sparsealign.evaluate.mbpp.extract import truncate_at_stop

log = logging.getLogger("sparsealign.evaluate")


class SamplingConfig(StrictModel):
    """How completions are drawn. temperature 0 means greedy decoding (then n must be 1)."""

    n: int = Field(1, ge=1, description="completions per prompt")
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(512, ge=1)
    batch_size: int = Field(8, ge=1, description="prompts per generate call (each yields n sequences)")
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


def shared_prefix_length(encoded: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, leaving each prompt at least one token of its own (0 for one prompt)."""
    if len(encoded) < 2:
        return 0
    n = min(len(ids) for ids in encoded) - 1
    first = encoded[0]
    for i in range(max(n, 0)):
        if any(ids[i] != first[i] for ids in encoded[1:]):
            return i
    return max(n, 0)


def greedy_decode(
    model,
    encoded: Sequence[list[int]],
    *,
    max_new_tokens: int,
    eos: set[int],
    pad_id: int,
    stop: Callable[[list[int]], bool] = lambda ids: False,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[int]]:
    """Greedy completion ids for every prompt, in prompt order (each ends at its EOS or stop, at most max_new_tokens).

    The shared prefix runs once; each batch gets a copy of its KV cache expanded to the batch, then one prefill of
    the left-padded suffixes and a decode loop that drops finished rows from the batch (ids, mask, positions and
    cache rows).  Works unchanged on a sparsity-patched model: every call passes the per-row attention mask and
    position ids, and rows only ever attend to their own prompt.  Modules that keep per-row state (a per-row
    sparsity controller) follow the rows by exposing `batch_select_indices(indices)`, as HF caches do.
    """
    import torch
    from tqdm import tqdm
    from transformers import DynamicCache

    device = next(model.parameters()).device
    # a dynamic sparsity controller continues from the state saved when the prefix ran (sparse.runtime), so the
    # prefix is shared under sparsity too; each row keeps >= 2 tokens of its own, so its prefill stays a multi-token
    # call (what `--prefill dense` makes dense), as when the whole prompt is prefilled
    P = shared_prefix_length(encoded)
    P = min(P, max(0, min((len(e) for e in encoded), default=0) - 2))
    prefix_cache = None
    with torch.no_grad():
        if P:
            prefix_ids = torch.tensor([encoded[0][:P]], device=device)
            out_p = model(input_ids=prefix_ids, use_cache=True)
            prefix_cache = out_p.cache if getattr(out_p, "cache", None) is not None else out_p.past_key_values
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[list[int]] = [[] for _ in encoded]
        row_state = [m for m in model.modules() if callable(getattr(m, "batch_select_indices", None))]
        batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
            suffixes = [encoded[i][P:] for i in batch]
            cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else DynamicCache(config=model.config)
            if prefix_cache is not None:
                cache.batch_repeat_interleave(len(batch))
            _decode_batch(model, suffixes, P, cache, [out[i] for i in batch], max_new_tokens=max_new_tokens,
                          eos=eos, pad_id=pad_id, stop=stop, row_state=row_state)
    return out


def _cache_kw(model) -> str:
    """transformers >= 5.2x calls the KV-cache argument `cache`; older versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_batch(model, suffixes: list[list[int]], P: int, cache, outs: list[list[int]], *, max_new_tokens: int,
                  eos: set[int], pad_id: int, stop: Callable[[list[int]], bool], row_state: Sequence = ()) -> None:
    """Prefill the left-padded suffixes after a cached prefix of P positions, then decode; appends to `outs`."""
    import torch

    device = next(model.parameters()).device
    kw = {_cache_kw(model): cache, "use_cache": True}
    width = max(len(s) for s in suffixes)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in suffixes], device=device)
    own = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    mask = torch.cat([torch.ones(len(suffixes), P, dtype=own.dtype, device=device), own], dim=1)
    # position of each real token = tokens before it in its own prompt; pads get a harmless in-range value
    pos = (P + own.cumsum(1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, **kw).logits[:, -1]
    _preallocate(cache, max_new_tokens)
    nxt_pos = pos[:, -1:] + 1
    alive = list(range(len(suffixes)))
    while True:
        tok = logits.argmax(-1)
        keep = []
        for j, row in enumerate(alive):
            t = int(tok[j])
            outs[row].append(t)
            if not (t in eos or len(outs[row]) >= max_new_tokens or stop(outs[row])):
                keep.append(j)
        if not keep:
            return
        if len(keep) < len(alive):  # finished rows leave the batch: their cache rows are dropped
            idx = torch.tensor(keep, device=device)
            for holder in (cache, *row_state):
                holder.batch_select_indices(idx)
            tok, mask, nxt_pos = tok[idx], mask[idx], nxt_pos[idx]
            alive = [alive[j] for j in keep]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=mask, position_ids=nxt_pos, **kw).logits[:, -1]
        nxt_pos = nxt_pos + 1


@functools.cache
def _prealloc_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocLayer(DynamicLayer):
        """A DynamicLayer whose K/V live in a buffer sized for the whole decode: a new token writes one column, where
        DynamicLayer re-concatenates (copies) the entire cache of every layer at every step."""

        def __init__(self, keys, values, capacity: int):
            super().__init__()
            B, H, n, D = keys.shape
            self._k, self._v = keys.new_empty(B, H, capacity, D), values.new_empty(B, H, capacity, D)
            self._k[:, :, :n], self._v[:, :, :n] = keys, values
            self._n, self.device, self.is_initialized = n, keys.device, True
            self._views()

        def _views(self) -> None:
            self.keys, self.values = self._k[:, :, : self._n], self._v[:, :, : self._n]

        def update(self, key_states, value_states, *args, **kwargs):
            import torch

            n = key_states.shape[-2]
            if self._n + n > self._k.shape[-2]:  # more than planned (not in our loop): grow like DynamicLayer
                self._k = torch.cat([self._k, torch.empty_like(self._k[:, :, : self._n + n])], dim=-2)
                self._v = torch.cat([self._v, torch.empty_like(self._v[:, :, : self._n + n])], dim=-2)
            self._k[:, :, self._n: self._n + n], self._v[:, :, self._n: self._n + n] = key_states, value_states
            self._n += n
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices) -> None:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
            self._views()

    return PreallocLayer


def _preallocate(cache, extra: int) -> None:
    """Swap every plain DynamicLayer of `cache` for a preallocated one with room for `extra` more positions
    (sliding-window and other layer kinds are left as they are)."""
    from transformers.cache_utils import DynamicLayer

    cls = _prealloc_layer_class()
    layers = getattr(cache, "layers", None)
    if layers is None:
        return
    for i, layer in enumerate(layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.numel():
            layers[i] = cls(layer.keys, layer.values, layer.keys.shape[-2] + extra)
