"""Read llama2.c checkpoints (legacy v0, v1 fp32, v2 int8) and turn them into Hugging Face `LlamaForCausalLM`s.

llama2.c (karpathy) stores a Llama-2 shaped model as raw little-endian arrays; see `docs/convert.md` for the three
layouts.  The one non-obvious step is RoPE: llama2.c (like Meta's reference code) rotates interleaved pairs
(2i, 2i+1) of each head, HF Llama rotates the two halves (i, i + head_dim/2).  Permuting the output rows of wq and wk
per head (pair element 0 to the first half, element 1 to the second) makes q·k identical under either convention —
the same permutation as HF's `convert_llama_weights_to_hf.py`.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sparsealign.errors import DataError
from sparsealign.io import atomic_dir
from sparsealign.models.llama2c_tokenizer import build_hf_tokenizer, read_tokenizer

MAGIC = 0x616B3432  # "ak42" little-endian: the v1/v2 export header
HEADER_V1 = 256  # v1/v2 headers are padded to 256 bytes
LAYER_KEYS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass(frozen=True)
class Llama2cConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool = True
    version: int = 0

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-tensor shapes in llama2.c's own layout: matrices [out, in], per-layer tensors stacked on dim 0."""
        L, d, h, kv = self.n_layers, self.dim, self.hidden_dim, self.kv_dim
        return {
            "tok_embeddings": (self.vocab_size, d), "rms_att": (L, d), "rms_ffn": (L, d), "rms_final": (d,),
            "wq": (L, d, d), "wk": (L, kv, d), "wv": (L, kv, d), "wo": (L, d, d),
            "w1": (L, h, d), "w2": (L, d, h), "w3": (L, h, d), "wcls": (self.vocab_size, d),
        }


def _check_header(path: Path, cfg: Llama2cConfig) -> None:
    fields = asdict(cfg)
    for name in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"):
        if not 0 < fields[name] <= 1 << 20:
            raise DataError(path, f"not a llama2.c checkpoint: header field {name}={fields[name]} is out of range",
                            hint="pass a .bin written by llama2.c's export.py (legacy, version 1 or 2)")
    if cfg.dim % cfg.n_heads or cfg.n_heads % cfg.n_kv_heads or cfg.head_dim % 2:
        raise DataError(path, f"not a llama2.c checkpoint: dim={cfg.dim}, n_heads={cfg.n_heads}, "
                              f"n_kv_heads={cfg.n_kv_heads} do not divide evenly")


def _expect_size(path: Path, actual: int, expected: int) -> None:
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(path, f"llama2.c checkpoint {what}: {actual} bytes, the header implies {expected}",
                        hint="re-export or re-download the checkpoint")


def _read_header(path: Path, raw: bytes) -> tuple[Llama2cConfig, int, int]:
    """Returns (config, offset of the first weight, group size for v2)."""
    if len(raw) < 28:
        raise DataError(path, f"too short for a llama2.c checkpoint ({len(raw)} bytes)")
    magic = struct.unpack_from("<I", raw, 0)[0]
    if magic != MAGIC:  # legacy v0: no magic, negative vocab_size means an unshared classifier
        dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack_from("<7i", raw, 0)
        cfg = Llama2cConfig(dim, hidden, layers, heads, kv_heads, abs(vocab), seq, vocab > 0, 0)
        _check_header(path, cfg)
        return cfg, 28, 0
    if len(raw) < HEADER_V1:
        raise DataError(path, f"llama2.c v1/v2 header truncated ({len(raw)} bytes, need {HEADER_V1})")
    version = struct.unpack_from("<i", raw, 4)[0]
    if version not in (1, 2):
        raise DataError(path, f"unsupported llama2.c export version {version}",
                        hint="export with llama2.c's export.py --version 0, 1 or 2")
    dims = struct.unpack_from("<7i", raw, 8)
    shared = bool(raw[36])
    group = struct.unpack_from("<i", raw, 37)[0] if version == 2 else 0
    cfg = Llama2cConfig(*dims, shared_classifier=shared, version=version)
    _check_header(path, cfg)
    if version == 2 and (group <= 0 or cfg.dim % group):
        raise DataError(path, f"llama2.c v2 checkpoint has an invalid group size {group}")
    return cfg, HEADER_V1, group


def read_checkpoint(path: str | Path) -> tuple[Llama2cConfig, dict[str, np.ndarray]]:
    """Parse a llama2.c .bin into (config, float32 arrays in llama2.c layout). Size is checked exactly."""
    path = Path(path)
    raw = path.read_bytes()
    cfg, offset, group = _read_header(path, raw)
    shapes = cfg.shapes()
    if cfg.version == 0:
        # llama2.c legacy order; the RoPE tables (seq_len x head_dim/2, real then imag) are skipped
        order = ["tok_embeddings", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"]
        sizes = [int(np.prod(shapes[k])) for k in order] + [cfg.seq_len * cfg.head_dim]
        order.append("_freq_cis")
        if not cfg.shared_classifier:
            order.append("wcls")
            sizes.append(int(np.prod(shapes["wcls"])))
        _expect_size(path, len(raw), offset + 4 * sum(sizes))
        flat = np.frombuffer(raw, dtype="<f4", offset=offset)
        out, pos = {}, 0
        for key, size in zip(order, sizes, strict=True):
            if not key.startswith("_"):
                out[key] = flat[pos:pos + size].reshape(shapes[key]).astype(np.float32)
            pos += size
    else:
        out = _read_v12(path, raw, cfg, offset, group)
    if cfg.shared_classifier:
        out["wcls"] = out["tok_embeddings"]
    return cfg, out


def _read_v12(path: Path, raw: bytes, cfg: Llama2cConfig, offset: int, group: int) -> dict[str, np.ndarray]:
    """v1: norms, then fp32 matrices grouped by kind; v2: same order, matrices as int8 + per-group fp32 scales."""
    shapes = cfg.shapes()
    L = cfg.n_layers
    norms = [("rms_att", shapes["rms_att"]), ("rms_ffn", shapes["rms_ffn"]), ("rms_final", shapes["rms_final"])]
    mats = [("tok_embeddings", shapes["tok_embeddings"])] + [(k, shapes[k]) for k in LAYER_KEYS]
    if not cfg.shared_classifier:
        mats.append(("wcls", shapes["wcls"]))
    numel = {k: int(np.prod(s)) for k, s in norms + mats}
    n_norm = sum(numel[k] for k, _ in norms)
    if cfg.version == 1:
        expected = offset + 4 * (n_norm + sum(numel[k] for k, _ in mats))
    else:  # each layer's matrix is its own int8 block followed by its scales
        per = {k: numel[k] // (L if k in LAYER_KEYS else 1) for k, _ in mats}
        expected = offset + 4 * n_norm + sum(
            (L if k in LAYER_KEYS else 1) * (per[k] + 4 * (per[k] // group)) for k, _ in mats)
    _expect_size(path, len(raw), expected)
    out: dict[str, np.ndarray] = {}
    pos = offset
    for key, shape in norms:
        out[key] = np.frombuffer(raw, "<f4", numel[key], pos).reshape(shape).astype(np.float32)
        pos += 4 * numel[key]
    for key, shape in mats:
        if cfg.version == 1:
            out[key] = np.frombuffer(raw, "<f4", numel[key], pos).reshape(shape).astype(np.float32)
            pos += 4 * numel[key]
            continue
        blocks = []
        for _ in range(L if key in LAYER_KEYS else 1):
            n = per[key]
            q = np.frombuffer(raw, np.int8, n, pos).astype(np.float32)
            s = np.frombuffer(raw, "<f4", n // group, pos + n)
            pos += n + 4 * (n // group)
            blocks.append((q.reshape(-1, group) * s[:, None]).reshape(-1))
        out[key] = np.concatenate(blocks).reshape(shape)
    return out


def interleaved_to_halves(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Permute output rows [n_heads*head_dim, in] from RoPE pairs (2i, 2i+1) to halves (i, i+head_dim/2)."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def hf_state_dict(cfg: Llama2cConfig, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama2.c arrays -> `LlamaForCausalLM` state dict (HF Linear weights are also [out, in])."""
    sd = {"model.embed_tokens.weight": w["tok_embeddings"], "model.norm.weight": w["rms_final"]}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = w["rms_att"][i]
        sd[p + "post_attention_layernorm.weight"] = w["rms_ffn"][i]
        sd[p + "self_attn.q_proj.weight"] = interleaved_to_halves(w["wq"][i], cfg.n_heads)
        sd[p + "self_attn.k_proj.weight"] = interleaved_to_halves(w["wk"][i], cfg.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = w["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = w["wo"][i]
        sd[p + "mlp.gate_proj.weight"] = w["w1"][i]
        sd[p + "mlp.down_proj.weight"] = w["w2"][i]
        sd[p + "mlp.up_proj.weight"] = w["w3"][i]
    if not cfg.shared_classifier:
        sd["lm_head.weight"] = w["wcls"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sd.items()}


def hf_config(cfg: Llama2cConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.seq_len, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=cfg.shared_classifier, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attention_bias=False, mlp_bias=False,
    )


def to_hf_model(cfg: Llama2cConfig, weights: dict[str, np.ndarray]):
    """A float32 `LlamaForCausalLM` holding exactly the checkpoint's weights (eval mode)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(hf_config(cfg))
    state = {k: torch.from_numpy(v) for k, v in hf_state_dict(cfg, weights).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.shared_classifier)]
    if missing or unexpected:  # a bug in the mapping, never user input
        raise RuntimeError(f"llama2.c -> HF mapping incomplete: missing={missing} unexpected={unexpected}")
    if cfg.shared_classifier:
        model.tie_weights()
    model.generation_config.pad_token_id = 0
    return model.eval()


def convert(checkpoint: str | Path, tokenizer: str | Path, out: str | Path) -> dict:
    """Write `out/` with model.safetensors + config.json + tokenizer files, atomically. Returns a summary."""

    cfg, weights = read_checkpoint(checkpoint)
    pieces, scores = read_tokenizer(tokenizer)
    if len(pieces) != cfg.vocab_size:
        raise DataError(tokenizer, f"tokenizer has {len(pieces)} pieces but the checkpoint's vocab_size is "
                                   f"{cfg.vocab_size}", hint="pass the tokenizer the checkpoint was trained with")
    from transformers.utils import logging as hf_logging

    model = to_hf_model(cfg, weights)
    tok = build_hf_tokenizer(pieces, scores)
    hf_logging.disable_progress_bar()  # stderr stays one line per problem
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    n_params = sum(p.numel() for p in model.parameters())
    return {"out": str(out), "format_version": cfg.version, "parameters": n_params, **asdict(cfg)}
