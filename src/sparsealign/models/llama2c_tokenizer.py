"""llama2.c's `tokenizer.bin` export (e.g. tok512.bin) -> an HF fast tokenizer that encodes exactly like llama2.c.

The file holds a SentencePiece BPE vocabulary: `<unk>`, BOS, EOS, 256 byte-fallback pieces `<0x00>`..`<0xFF>`,
then pieces whose score orders the merges (higher = earlier).  llama2.c encodes by prepending a dummy space, splitting
into code points (unknown ones become byte tokens) and repeatedly merging the adjacent pair whose concatenation is the
highest-scoring piece.  That is BPE with merges ranked by the merged piece's score, which `tokenizers.models.BPE`
runs natively once we spell spaces as SentencePiece's `▁` and list every (left, right) split of every piece.
"""

from __future__ import annotations

import struct
from pathlib import Path

from sparsealign.errors import DataError

SPACE = "\u2581"  # SentencePiece's visible space
SPECIALS = {0: "<unk>", 1: "<s>", 2: "</s>"}  # llama2.c spells BOS/EOS "\n<s>\n" / "\n</s>\n" for printing


def read_tokenizer(path: str | Path) -> tuple[list[str], list[float]]:
    """Parse the export: int32 max_token_length, then per piece (float32 score, int32 len, len UTF-8 bytes)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 4:
        raise DataError(path, "too short for a llama2.c tokenizer (expected int32 max_token_length first)")
    max_len = struct.unpack_from("<i", raw, 0)[0]
    if not 0 < max_len <= 1024:
        raise DataError(path, f"not a llama2.c tokenizer: max_token_length={max_len}",
                        hint="pass the tokenizer .bin written by llama2.c's tokenizer.py export")
    pieces: list[str] = []
    scores: list[float] = []
    pos = 4
    while pos < len(raw):
        if pos + 8 > len(raw):
            raise DataError(path, f"tokenizer truncated inside the record of piece {len(pieces)}")
        score, n = struct.unpack_from("<fi", raw, pos)
        if not 0 <= n <= max_len or pos + 8 + n > len(raw):
            raise DataError(path, f"tokenizer record {len(pieces)} is corrupt or truncated (length {n})")
        try:
            pieces.append(raw[pos + 8:pos + 8 + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(path, f"tokenizer piece {len(pieces)} is not UTF-8") from None
        scores.append(score)
        pos += 8 + n
    if len(pieces) < 259 or pieces[3] != "<0x00>" or pieces[258] != "<0xFF>":
        raise DataError(path, "not a llama2.c SentencePiece tokenizer: expected <unk>, BOS, EOS and byte pieces "
                              "<0x00>..<0xFF> at ids 0-258")
    return pieces, scores


def hf_vocab(pieces: list[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, piece in enumerate(pieces):
        token = SPECIALS.get(i, piece.replace(" ", SPACE))
        vocab.setdefault(token, i)  # a duplicate piece keeps its first id, as llama2.c's lookup would
    return vocab


def bpe_merges(pieces: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """Every split (left, right) of a mergeable piece into two pieces, ranked by the merged piece's score."""
    vocab = hf_vocab(pieces)
    ranked = []
    for i in range(259, len(pieces)):
        token = pieces[i].replace(" ", SPACE)
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], i, vocab[left], (left, right)))
    ranked.sort()
    return [pair for *_, pair in ranked]


def build_hf_tokenizer(pieces: list[str], scores: list[float]):
    """A `PreTrainedTokenizerFast`: BOS added, dummy prefix space, byte fallback, left padding with <unk>."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    bpe = models.BPE(vocab=hf_vocab(pieces), merges=bpe_merges(pieces, scores), unk_token="<unk>",
                     byte_fallback=True, fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(SPECIALS[i], special=True, normalized=False) for i in range(3)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    # Llama checkpoints have no pad token; <unk> never appears in llama2.c text, so it is safe to pad with
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        padding_side="left", add_bos_token=True, clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
