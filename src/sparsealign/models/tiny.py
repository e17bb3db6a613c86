"""Tiny real models built locally: a byte-level BPE tokenizer trained on local text and a random-init Llama.

Tests and the embedded default cannot download weights, so every stage is exercised on these.  They are ordinary
`PreTrainedTokenizerFast` / `LlamaForCausalLM` objects: whatever runs on them runs unchanged on a hub checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, min_frequency: int = 2):
    """Train a byte-level BPE tokenizer (no <unk> needed: every byte is in the base alphabet)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # decoder-only generation pads on the left; passed to the constructor so save_pretrained keeps it
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)


def build_llama(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    hidden_act: str = "silu",
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    pad_token_id: int = 0,
    bos_token_id: int = 1,
    eos_token_id: int = 2,
):
    """A random-init `LlamaForCausalLM` (SwiGLU with hidden_act='silu', ReLU-gated with 'relu')."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        hidden_act=hidden_act,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def tiny_model_and_tokenizer(texts: Iterable[str], *, vocab_size: int = 512, seed: int = 0, **model_kwargs):
    """Tokenizer trained on `texts` plus a matching random-init Llama (the usual test fixture)."""
    tok = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_llama(
        len(tok), seed=seed, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, **model_kwargs,
    )
    return model, tok


def save_pretrained(model, tokenizer, path: str | Path) -> Path:
    """Save model (safetensors) and tokenizer so `from_pretrained(path)` reloads both."""
    path = Path(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
