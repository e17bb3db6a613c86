"""Greedy decoding for MBPP pass@1: a shared-prefix KV cache and continuous batching.

The prompts' shared token prefix (the 3-shot block of the lm-eval prompt) runs once; every group of prompts gets a
copy of its KV cache expanded to the group, then one prefill of the left-padded suffixes.  Each row is laid out as
[prefix][pads][own suffix] with the pads masked out and explicit position ids that skip them, so every row sees
exactly its unpadded prompt.  Rows stop on EOS or a stop string and leave the batch at once (their cache rows are
dropped).

Continuous batching: when a quarter of the batch has finished and prompts are waiting, the waiting prompts are
prefilled as a group and join the running batch, so decode steps run full batches instead of a shrinking tail
(a batch of 16 MBPP rows: most stop after ~40 tokens, one runs to the limit).  Joining re-lays every row's cache:
its live columns (keys carry their rotary positions, so column order does not matter to attention) are packed to
the right of one shared width, which also drops the columns of rows that already left.  Per-row state kept
outside the KV cache follows through the cache: a dynamic sparsity controller patches `batch_select_indices` and
`batch_join` onto the caches it continues (sparse.runtime), and a join calls the latter; state that cannot follow
(a module with its own `batch_select_indices`) turns joining off, and prompts wait until the batch is empty, as in
plain static batching.  Either way each row's tokens are what it decodes alone (tested, dense, static, dynamic).
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sparsealign.sparse.runtime.state import output_cache


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


@torch.no_grad()
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
    """Greedy completion ids for every prompt, in prompt order (each ends at its EOS or stop, at most
    max_new_tokens).  Works unchanged on a sparsity-patched model: every call passes the per-row attention mask and
    position ids, and rows only ever attend to their own prompt."""
    from tqdm import tqdm

    # a dynamic sparsity controller continues from the state saved when the prefix ran (sparse.runtime), so the
    # prefix is shared under sparsity too; each row keeps >= 2 tokens of its own, so its prefill stays a multi-token
    # call (what `--prefill dense` makes dense), as when the whole prompt is prefilled
    P = shared_prefix_length(encoded)
    P = min(P, max(0, min((len(e) for e in encoded), default=0) - 2))
    prefix_cache = None
    if P:
        device = next(model.parameters()).device
        out_p = model(input_ids=torch.tensor([encoded[0][:P]], device=device), use_cache=True)
        prefix_cache = output_cache(out_p)
    out: list[list[int]] = [[] for _ in encoded]
    row_state = [m for m in model.modules() if callable(getattr(m, "batch_select_indices", None))]
    pending = deque(sorted(range(len(encoded)), key=lambda i: len(encoded[i])))
    joinable, batch = not row_state, None
    with tqdm(total=len(encoded), desc="generate", disable=not progress, leave=False) as bar:
        while pending or batch is not None:
            free = batch_size - (batch.size if batch is not None else 0)
            if pending and (batch is None or (joinable and free >= max(1, batch_size // 4))):
                rows = [pending.popleft() for _ in range(min(free, len(pending)))]
                group = _prefill(model, [encoded[i][P:] for i in rows], rows, P, prefix_cache, pad_id)
                joinable = joinable and _joinable(group.cache)
                batch = group.start(max_new_tokens) if batch is None else batch.join(group, max_new_tokens)
            finished = batch.take_tokens(out, eos, max_new_tokens, stop, row_state)
            bar.update(finished)
            if batch.size == 0:
                batch = None
            else:
                batch.step(model)
    return out


def _cache_kw(model) -> str:
    """transformers >= 5.2x calls the KV-cache argument `cache`; older versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass
class _Batch:
    """Running rows: their KV cache, attention mask [B, W], next positions [B, 1], last logits [B, V] and the index
    of the prompt each row decodes."""

    cache: Any
    mask: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor
    rows: list[int]
    tok: torch.Tensor | None = None  # each row's last token (set by take_tokens)

    @property
    def size(self) -> int:
        return len(self.rows)

    def start(self, room: int) -> _Batch:
        _preallocate(self.cache, room)
        return self

    def take_tokens(self, outs: list[list[int]], eos: set[int], max_new_tokens: int,
                    stop: Callable[[list[int]], bool], row_state: Sequence = ()) -> int:
        """Append each row's greedy token; rows that ended leave the batch.  Returns how many ended."""
        tok = self.logits.argmax(-1)
        keep = []
        for j, row in enumerate(self.rows):
            t = int(tok[j])
            outs[row].append(t)
            if not (t in eos or len(outs[row]) >= max_new_tokens or stop(outs[row])):
                keep.append(j)
        self.tok = tok
        if len(keep) < self.size:
            idx = torch.tensor(keep, device=tok.device, dtype=torch.long)
            if keep:
                for holder in (self.cache, *row_state):
                    holder.batch_select_indices(idx)
            self.tok, self.mask, self.pos = tok[idx], self.mask[idx], self.pos[idx]
            ended, self.rows = self.size - len(keep), [self.rows[j] for j in keep]
            return ended
        return 0

    def step(self, model) -> None:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        self.logits = model(input_ids=self.tok[:, None], attention_mask=self.mask, position_ids=self.pos,
                            use_cache=True, **{_cache_kw(model): self.cache}).logits[:, -1]
        self.pos = self.pos + 1

    def join(self, new: _Batch, room: int) -> _Batch:
        """This batch followed by `new`'s rows, every row's live cache columns packed right into one width."""
        if "batch_join" in vars(self.cache):  # per-row state outside the cache follows the rows
            self.cache.batch_join(new.cache, self.size, new.size)
        live_a, live_b = self.mask.bool(), new.mask.bool()
        width = int(max(live_a.sum(1).max(), live_b.sum(1).max()))
        idx_a, mask_a = _packed(live_a, width)
        idx_b, mask_b = _packed(live_b, width)
        cls = _prealloc_layer_class()
        for i, (la, lb) in enumerate(zip(self.cache.layers, new.cache.layers, strict=True)):
            keys = torch.cat([_gather(la.keys, idx_a), _gather(lb.keys, idx_b)])
            values = torch.cat([_gather(la.values, idx_a), _gather(lb.values, idx_b)])
            self.cache.layers[i] = cls(keys, values, width + room)
        self.mask = torch.cat([mask_a, mask_b]).to(self.mask.dtype)
        self.pos = torch.cat([self.pos, new.pos])
        self.logits = torch.cat([self.logits, new.logits])
        self.rows = self.rows + new.rows
        return self


def _joinable(cache) -> bool:
    """Plain full-attention layers, and whoever follows the cache's rows can follow a join too (a dynamic sparsity
    controller patches `batch_select_indices` and `batch_join` onto the caches it continues, sparse.runtime)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    follows = "batch_select_indices" in vars(cache)
    return ((not follows or "batch_join" in vars(cache)) and layers is not None
            and all(type(layer) in (DynamicLayer, _prealloc_layer_class()) for layer in layers))


def _packed(live: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the column indices that put its live columns (in order) at the right of `width` columns, and the
    new [B, width] mask; the masked columns on the left repeat a column that no query attends to."""
    order = torch.argsort(live.to(torch.int8), dim=1, stable=True)[:, -width:]  # masked first, then live
    if order.shape[1] < width:  # a narrower batch: its left columns repeat column 0 (masked)
        order = torch.nn.functional.pad(order, (width - order.shape[1], 0))
    n = live.sum(1, keepdim=True)
    return order, torch.arange(width, device=live.device)[None, :] >= width - n


def _gather(states: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    B, H, _, D = states.shape
    return states.gather(2, idx[:, None, :, None].expand(B, H, idx.shape[1], D))


def _prefill(model, suffixes: list[list[int]], rows: list[int], P: int, prefix_cache, pad_id: int) -> _Batch:
    """Prefill the left-padded suffixes after a copy of the cached prefix of P positions."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache = copy.deepcopy(prefix_cache) if prefix_cache is not None else DynamicCache(config=model.config)
    if prefix_cache is not None:
        cache.batch_repeat_interleave(len(suffixes))
    width = max(len(s) for s in suffixes)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in suffixes], device=device)
    own = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=device)
    mask = torch.cat([torch.ones(len(suffixes), P, dtype=own.dtype, device=device), own], dim=1)
    # position of each real token = tokens before it in its own prompt; pads get a harmless in-range value
    pos = (P + own.cumsum(1) - 1).clamp_min(0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1, use_cache=True,
                   **{_cache_kw(model): cache}).logits[:, -1]
    return _Batch(cache, mask, pos[:, -1:] + 1, logits, rows)


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
            n = key_states.shape[-2]
            if self._n + n > self._k.shape[-2]:  # more than planned: grow like DynamicLayer
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
