"""llama2.c -> HF conversion, checked against an independent NumPy reading of the raw .bin (run.c semantics)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error
from sparsealign.models.llama2c import convert, read_checkpoint
from sparsealign.models.llama2c_tokenizer import read_tokenizer

PROMPT = "Once upon a time"
# PROVENANCE.md of shared/data/models/stories260K: greedy continuation and NLL 0.345 nats/token on this text
EXPECTED = (", there was a little girl named Lily. She loved to play outside in the park. "
            "One day, she saw a big, red ball.")
NLL_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
            "One day, she saw a big red ball.")


@pytest.fixture(scope="module")
def files(data_dir: Path) -> tuple[Path, Path]:
    root = data_dir / "models" / "stories260K"
    return root / "stories260K.bin", root / "tok512.bin"


@pytest.fixture(scope="module")
def hf_dir(files, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conv") / "stories260K"
    convert(*files, out)
    return out


# ---------------------------------------------------------------- independent reference (llama2.c run.c)
def raw_weights(path: Path) -> tuple[list[int], dict[str, np.ndarray]]:
    """Read the legacy .bin straight from the byte layout in PROVENANCE.md (no project code)."""
    raw = path.read_bytes()
    dim, hid, L, nh, nkv, vocab, seq = struct.unpack_from("<7i", raw, 0)
    hs = dim // nh
    kv = hs * nkv
    flat = np.frombuffer(raw, "<f4", offset=28)
    layout = [("emb", (abs(vocab), dim)), ("rms_att", (L, dim)), ("wq", (L, dim, dim)), ("wk", (L, kv, dim)),
              ("wv", (L, kv, dim)), ("wo", (L, dim, dim)), ("rms_ffn", (L, dim)), ("w1", (L, hid, dim)),
              ("w2", (L, dim, hid)), ("w3", (L, hid, dim)), ("rms_final", (dim,)), ("freq", (2, seq, hs // 2))]
    w, pos = {}, 0
    for name, shape in layout:
        n = int(np.prod(shape))
        w[name] = flat[pos:pos + n].reshape(shape)
        pos += n
    w["wcls"] = w["emb"] if vocab > 0 else flat[pos:].reshape(-vocab, dim)
    return [dim, hid, L, nh, nkv, abs(vocab), seq], w


def run_c_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Token-by-token forward with a KV cache, following llama2.c run.c `forward()` line by line."""
    (dim, hid, L, nh, nkv, vocab, seq), w = raw_weights(path)
    hs, kv_mul = dim // nh, nh // nkv

    def rmsnorm(x, g):
        return g * (x / np.sqrt(np.mean(x * x) + 1e-5))

    kcache = np.zeros((L, len(tokens), nkv * hs), np.float32)
    vcache = np.zeros_like(kcache)
    out = []
    for pos, tok in enumerate(tokens):
        x = w["emb"][tok].astype(np.float32).copy()
        for layer in range(L):
            xb = rmsnorm(x, w["rms_att"][layer])
            q, k, v = w["wq"][layer] @ xb, w["wk"][layer] @ xb, w["wv"][layer] @ xb
            for i in range(0, dim, 2):  # RoPE on interleaved pairs
                val = pos * (1.0 / 10000.0 ** ((i % hs) / hs))
                fcr, fci = np.cos(val), np.sin(val)
                for vec in ((q, k) if i < nkv * hs else (q,)):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = v0 * fcr - v1 * fci, v0 * fci + v1 * fcr
            kcache[layer, pos], vcache[layer, pos] = k, v
            att_out = np.zeros(dim, np.float32)
            for h in range(nh):
                qh = q[h * hs:(h + 1) * hs]
                kvh = (h // kv_mul) * hs
                scores = kcache[layer, :pos + 1, kvh:kvh + hs] @ qh / np.sqrt(hs)
                p = np.exp(scores - scores.max())
                p /= p.sum()
                att_out[h * hs:(h + 1) * hs] = p @ vcache[layer, :pos + 1, kvh:kvh + hs]
            x = x + w["wo"][layer] @ att_out
            xb = rmsnorm(x, w["rms_ffn"][layer])
            h1, h3 = w["w1"][layer] @ xb, w["w3"][layer] @ xb
            x = x + w["w2"][layer] @ (h1 / (1 + np.exp(-h1)) * h3)
        out.append(w["wcls"] @ rmsnorm(x, w["rms_final"]))
    return np.stack(out)


def llama2c_encode(text: str, pieces: list[str], scores: list[float]) -> list[int]:
    """llama2.c `encode()`: BOS, dummy prefix space, code points (else byte fallback), best-score merges."""
    lookup: dict[str, int] = {}
    for i, p in enumerate(pieces):
        lookup.setdefault(p, i)
    tokens = [1] + ([lookup[" "]] if text else [])
    for ch in text:
        tokens += [lookup[ch]] if ch in lookup else [b + 3 for b in ch.encode("utf-8")]
    while True:
        best = (-1e10, -1, -1)
        for i in range(len(tokens) - 1):
            tid = lookup.get(pieces[tokens[i]] + pieces[tokens[i + 1]], -1)
            if tid >= 0 and scores[tid] > best[0]:
                best = (scores[tid], tid, i)
        if best[2] < 0:
            return tokens
        tokens[best[2]:best[2] + 2] = [best[1]]


# ---------------------------------------------------------------- tests
@pytest.mark.slow
def test_greedy_continuation_matches_numpy_run_c(files, hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    tok = AutoTokenizer.from_pretrained(hf_dir)
    pieces, scores = read_tokenizer(files[1])
    tokens = llama2c_encode(PROMPT, pieces, scores)
    assert tok(PROMPT).input_ids == tokens
    for _ in range(30):  # greedy decode with the NumPy reference
        tokens.append(int(run_c_logits(files[0], tokens)[-1].argmax()))
    with torch.no_grad():
        hf = model.generate(torch.tensor([tokens[:5]]), max_new_tokens=30, do_sample=False)[0].tolist()
    assert hf == tokens
    ref = run_c_logits(files[0], tokens)
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].numpy()
    assert np.abs(logits - ref).max() < 1e-3
    text = tok.decode(hf, skip_special_tokens=True)
    assert text.startswith(PROMPT + EXPECTED[:60]), text


def test_nll_matches_provenance(hf_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = AutoTokenizer.from_pretrained(hf_dir)(NLL_TEXT, return_tensors="pt").input_ids
    assert ids.shape[1] == 44
    with torch.no_grad():
        nll = model(ids, labels=ids).loss.item()
    assert abs(nll - 0.345) < 0.005, nll


def test_tokenizer_matches_llama2c_encode_and_round_trips(files, hf_dir, data_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    pieces, scores = read_tokenizer(files[1])
    rows = [json.loads(line) for line in (data_dir / "mbpp" / "mbpp.jsonl").read_text().splitlines()[:60]]
    texts = [NLL_TEXT, "", " ", "  two  spaces", "naïve café — “quotes” 😀 \t\nend", "Tom's dog, Max!"]
    texts += [r["text"] for r in rows] + [r["code"][:300] for r in rows[:20]]
    for text in texts:
        ids = llama2c_encode(text, pieces, scores)
        assert tok(text).input_ids == ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 261]) == ["<unk>", "<s>", "</s>", "<0x00>", "\u2581a"]


def _write_v1(path: Path, cfg: list[int], w: dict[str, np.ndarray], version: int, group: int = 0) -> None:
    """llama2.c export.py `version1_export` / `version2_export` layout, written independently."""
    dim, hid, L, nh, nkv, vocab, seq = cfg
    head = struct.pack("<Ii7iB", 0x616B3432, version, dim, hid, L, nh, nkv, vocab, seq, 1)
    head += struct.pack("<i", group) if version == 2 else b""
    body = [w["rms_att"], w["rms_ffn"], w["rms_final"]]
    mats = [w["emb"]] + [w[k][i] for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for i in range(L)]
    if version == 1:
        body += mats
        data = b"".join(np.asarray(a, "<f4").tobytes() for a in body)
    else:
        data = b"".join(np.asarray(a, "<f4").tobytes() for a in body)
        for m in mats:
            g = m.reshape(-1, group)
            s = np.abs(g).max(axis=1) / 127.0
            data += np.round(g / s[:, None]).astype(np.int8).tobytes() + s.astype("<f4").tobytes()
    path.write_bytes(head.ljust(256, b"\0") + data)


@pytest.mark.parametrize("version", [1, 2])
def test_v1_v2_exports_read_like_legacy(files, tmp_path, version):
    cfg, w = raw_weights(files[0])
    path = tmp_path / f"v{version}.bin"
    _write_v1(path, cfg, w, version, group=32)
    conf, got = read_checkpoint(path)
    assert (conf.version, conf.dim, conf.n_kv_heads, conf.shared_classifier) == (version, 64, 4, True)
    for mine, ref in [("wq", "wq"), ("w2", "w2"), ("tok_embeddings", "emb"), ("rms_ffn", "rms_ffn")]:
        # int8 rounding moves a weight by at most half a step of its group's scale (max|w| / 127)
        tol = 0.0 if version == 1 or mine == "rms_ffn" else np.abs(w[ref]).max() / 254
        assert np.abs(got[mine] - w[ref]).max() <= tol + 1e-7, mine


def test_unshared_classifier_legacy(files, tmp_path):
    raw = files[0].read_bytes()
    cfg, w = raw_weights(files[0])
    wcls = np.random.default_rng(0).standard_normal((512, 64)).astype("<f4")
    path = tmp_path / "unshared.bin"
    path.write_bytes(raw[:20] + struct.pack("<i", -512) + raw[24:] + wcls.tobytes())
    conf, got = read_checkpoint(path)
    assert not conf.shared_classifier and np.array_equal(got["wcls"], wcls)
    out = tmp_path / "hf"
    convert(path, files[1], out)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert np.array_equal(model.lm_head.weight.detach().numpy(), wcls)
    assert not np.array_equal(model.model.embed_tokens.weight.detach().numpy(), wcls)


@pytest.mark.slow
def test_cli_convert_and_bad_inputs(cli, files, tmp_path):
    res = cli("convert", "llama2c", str(files[0]), "--tokenizer", str(files[1]), "--out", "hf", "--json",
              env={"OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    summary = res.json()
    assert summary["parameters"] == 260032 and summary["n_kv_heads"] == 4
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "tokenizer.json").exists()

    truncated = tmp_path / "trunc.bin"
    truncated.write_bytes(files[0].read_bytes()[:500_000])
    res = cli("convert", "llama2c", str(truncated), "--tokenizer", str(files[1]), "--out", "bad1")
    assert_one_line_error(res, "trunc.bin", "truncated")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\xff" * 4096)
    res = cli("convert", "llama2c", str(garbage), "--tokenizer", str(files[1]), "--out", "bad2")
    assert_one_line_error(res, "garbage.bin", "not a llama2.c checkpoint")
    version9 = tmp_path / "v9.bin"
    version9.write_bytes(struct.pack("<Ii", 0x616B3432, 9).ljust(300, b"\0"))
    res = cli("convert", "llama2c", str(version9), "--tokenizer", str(files[1]), "--out", "bad3")
    assert_one_line_error(res, "v9.bin", "version 9")
    res = cli("convert", "llama2c", str(files[0]), "--tokenizer", str(files[0]), "--out", "bad4")
    assert_one_line_error(res, "stories260K.bin", "tokenizer")
    assert not any((tmp_path / name).exists() for name in ("bad1", "bad2", "bad3", "bad4"))
