"""Batch-1 greedy decode of an HF Llama-family model with a static KV cache and the layer loop in plain torch ops.

Why not the HF model's own forward: per token it walks ~20 nn.Modules per layer, builds masks, position ids and
cache objects, and at batch 1 that Python work costs more than the bytes it moves for every part but the FFN.
Why not `torch.compile`: on 2 shared CPU cores compiling a 22-layer stack takes minutes, and the sparse kernels are
ctypes calls (graph breaks).  This loop reads the model's own weights (no copies), keeps K/V in preallocated
[layers, kv_heads, max_len, head_dim] tensors, and calls one `LayerOps` object for the weight-heavy parts:

    ops.qkv(l, h) -> (q, k, v)     ops.o(l, attn) -> y     ops.mlp(l, h) -> y     (h, attn, y: 1-D, one position)

so dense and sparse decoding run the very same loop, and `ops.bytes_read` counts the weight bytes each part
touched (roofline accounting; the decoder adds norms, K/V, lm_head and the embedding row itself).
Prefill (the prompt, one batched pass at position 0) is dense for every ops object.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

F32 = 4  # bytes


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def inner_mlp(mlp: nn.Module) -> nn.Module:
    """The original HF MLP of a possibly patched layer (`SparseMLP.inner`)."""
    return getattr(mlp, "inner", mlp)


class DenseOps:
    """Dense projections straight from the HF modules' weights (F.linear = one MKL matvec each)."""

    def __init__(self, model: nn.Module):
        self.attn = [layer.self_attn for layer in model.model.layers]
        self.mlps = [inner_mlp(layer.mlp) for layer in model.model.layers]
        self.bytes_read = self.mlp_bytes = 0.0  # all projections / the MLP part of it
        a0, m0 = self.attn[0], self.mlps[0]
        self._qkv_bytes = F32 * sum(p.weight.numel() for p in (a0.q_proj, a0.k_proj, a0.v_proj))
        self._o_bytes = F32 * a0.o_proj.weight.numel()
        self._mlp_bytes = F32 * sum(p.weight.numel() for p in (m0.gate_proj, m0.up_proj, m0.down_proj))

    def qkv(self, li: int, h: torch.Tensor):
        a = self.attn[li]
        self.bytes_read += self._qkv_bytes
        return (F.linear(h, a.q_proj.weight, a.q_proj.bias), F.linear(h, a.k_proj.weight, a.k_proj.bias),
                F.linear(h, a.v_proj.weight, a.v_proj.bias))

    def o(self, li: int, x: torch.Tensor) -> torch.Tensor:
        p = self.attn[li].o_proj
        self.bytes_read += self._o_bytes
        return F.linear(x, p.weight, p.bias)

    def mlp(self, li: int, h: torch.Tensor) -> torch.Tensor:
        m = self.mlps[li]
        self.bytes_read += self._mlp_bytes
        self.mlp_bytes += self._mlp_bytes
        return F.linear(m.act_fn(F.linear(h, m.gate_proj.weight, m.gate_proj.bias)) *
                        F.linear(h, m.up_proj.weight, m.up_proj.bias), m.down_proj.weight, m.down_proj.bias)

    def prefill_mlp(self, li: int, h: torch.Tensor) -> torch.Tensor:
        m = self.mlps[li]
        return m.down_proj(m.act_fn(m.gate_proj(h)) * m.up_proj(h))


class PatchedOps(DenseOps):
    """Dense attention, and the MLP through the model's patched `SparseMLP` wrappers (`sparse.runtime.patch` fast path):
    their `NeuronMajor.bytes_read` counters give the FFN bytes; `extra_mlp_bytes` adds what the wrapper reads
    outside them per call (the predictor's weights in predictor mode)."""

    def __init__(self, model: nn.Module, extra_mlp_bytes: float = 0.0):
        super().__init__(model)
        self.wrappers = [layer.mlp for layer in model.model.layers]
        self.extra = extra_mlp_bytes

    def mlp(self, li: int, h: torch.Tensor) -> torch.Tensor:
        nm = self.wrappers[li]._nm
        before = nm.bytes_read
        y = self.wrappers[li](h.view(1, 1, -1)).view(-1)
        n = nm.bytes_read - before + self.extra
        self.bytes_read += n
        self.mlp_bytes += n
        return y


class Decoder:
    """One decoding stream (its own KV cache) over a model's weights; `ops` decides how projections run."""

    def __init__(self, model: nn.Module, ops: DenseOps, max_len: int = 512):
        cfg, m = model.config, model.model
        self.ops, self.max_len = ops, max_len
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        self.eps = cfg.rms_norm_eps
        self.norms = [(layer.input_layernorm.weight, layer.post_attention_layernorm.weight) for layer in m.layers]
        self.emb, self.norm, self.lm_head = m.embed_tokens.weight, m.norm.weight, model.lm_head.weight
        with torch.no_grad():
            cos, sin = m.rotary_emb(self.emb[:1][None], torch.arange(max_len)[None])
        self.cos, self.sin = cos[0].float(), sin[0].float()  # [max_len, hd]
        L = len(self.norms)
        self.k = torch.zeros(L, self.nkv, max_len, self.hd)
        self.v = torch.zeros(L, self.nkv, max_len, self.hd)
        self.pos, self.ffn_seconds, self.layer_seconds = 0, 0.0, 0.0
        self.fixed_bytes = 0.0  # norms, K/V reads and writes, embedding row, lm_head

    def step_bytes_fixed(self, pos: int) -> float:
        """Bytes one decode step at position `pos` reads outside the projections (see roofline.step_bytes)."""
        L, H = len(self.norms), self.emb.shape[1]
        kv = 2 * self.nkv * self.hd * F32
        return L * (2 * H * F32 + kv * (pos + 1)) + H * F32 + self.lm_head.numel() * F32 + H * F32

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> logits [V] of the last position; fills the cache from position 0 (dense)."""
        T = ids.numel()
        x = self.emb[ids]
        cos, sin = self.cos[:T], self.sin[:T]
        rep = self.nh // self.nkv
        for li, (w_in, w_post) in enumerate(self.norms):
            a = self.ops.attn[li]
            h = _rms(x, w_in, self.eps)
            q = _rope(a.q_proj(h).view(T, self.nh, self.hd).transpose(0, 1), cos, sin)
            k = _rope(a.k_proj(h).view(T, self.nkv, self.hd).transpose(0, 1), cos, sin)
            v = a.v_proj(h).view(T, self.nkv, self.hd).transpose(0, 1)
            self.k[li, :, :T], self.v[li, :, :T] = k, v
            o = F.scaled_dot_product_attention(q[None], k.repeat_interleave(rep, 0)[None],
                                               v.repeat_interleave(rep, 0)[None], is_causal=True)[0]
            x = x + a.o_proj(o.transpose(0, 1).reshape(T, -1))
            x = x + self.ops.prefill_mlp(li, _rms(x, w_post, self.eps))
        self.pos = T
        return F.linear(_rms(x[-1], self.norm, self.eps), self.lm_head)

    @torch.no_grad()
    def step(self, token: int) -> torch.Tensor:
        """One decode step: token at position self.pos -> logits [V]."""
        pos, ops = self.pos, self.ops
        if pos >= self.max_len:
            raise ValueError(f"decode past max_len={self.max_len}")
        self.fixed_bytes += self.step_bytes_fixed(pos)
        x = self.emb[token]
        cos, sin = self.cos[pos], self.sin[pos]
        g, n = self.nh // self.nkv, pos + 1
        scale = self.hd ** -0.5
        t_layers = time.perf_counter()
        for li, (w_in, w_post) in enumerate(self.norms):
            q, k, v = ops.qkv(li, _rms(x, w_in, self.eps))
            self.k[li, :, pos] = _rope(k.view(self.nkv, self.hd), cos, sin)
            self.v[li, :, pos] = v.view(self.nkv, self.hd)
            q = _rope(q.view(self.nh, self.hd), cos, sin).view(self.nkv, g, self.hd)
            att = torch.softmax(torch.bmm(q, self.k[li, :, :n].transpose(1, 2)) * scale, dim=-1)  # [kv, g, n]
            x = x + ops.o(li, torch.bmm(att, self.v[li, :, :n]).view(-1))
            h = _rms(x, w_post, self.eps)
            t0 = time.perf_counter()
            x = x + ops.mlp(li, h)
            self.ffn_seconds += time.perf_counter() - t0
        self.layer_seconds += time.perf_counter() - t_layers
        self.pos = pos + 1
        return F.linear(_rms(x, self.norm, self.eps), self.lm_head)

    @property
    def bytes_read(self) -> float:
        return self.fixed_bytes + self.ops.bytes_read

    def reset_counters(self) -> None:
        self.fixed_bytes = self.ops.bytes_read = self.ops.mlp_bytes = 0.0
        self.ffn_seconds = self.layer_seconds = 0.0


@torch.no_grad()
def greedy(model: nn.Module, prompt: torch.Tensor, tokens: int, ops: DenseOps | None = None) -> list[int]:
    """Greedy continuation ids (first token from the prefill) of prompt [1, P] or [P]."""
    dec = Decoder(model, ops or DenseOps(model), max_len=prompt.numel() + tokens + 1)
    nxt = int(dec.prefill(prompt.reshape(-1)).argmax())
    out = [nxt]
    for _ in range(tokens):
        nxt = int(dec.step(nxt).argmax())
        out.append(nxt)
    return out
