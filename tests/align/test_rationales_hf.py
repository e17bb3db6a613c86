"""Rationales from a local Hugging Face causal LM (a tiny random Llama built here: the text is meaningless, the
pipeline -- prompt, truncation to the context, batched left-padded generate, resumable output -- is real)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sparsealign.cli import main
from sparsealign.data.preference import load_pairs
from sparsealign.models.tiny import save_pretrained, tiny_model_and_tokenizer

HH = "hh-rlhf/helpful-base/test.jsonl.gz"


def test_generate_with_local_hf_model(tmp_path: Path, data_dir: Path, capsys):
    pairs = load_pairs(HH, limit=40).pairs
    texts = [p.prompt + p.chosen + p.rejected for p in pairs]
    model, tok = tiny_model_and_tokenizer(texts, vocab_size=400, hidden_size=32, num_layers=1, num_heads=2,
                                          max_position_embeddings=256)
    # a chat template, as instruction-tuned checkpoints have (system turn included)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    # greedy decoding of a random model repeats one (often whitespace) token: sample, and never stop early
    model.generation_config.suppress_tokens = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    model_dir = save_pretrained(model, tok, tmp_path / "tiny-lm")
    out = tmp_path / "hf.jsonl"
    # in-process CLI (the subprocess path is covered by the other rationale tests; this saves a torch import)
    capsys.readouterr()
    code = main(["rationales", "generate", "--data", HH, "--out", str(out), "--source", "hf", "--model",
                 str(model_dir), "--limit", "3", "--batch-size", "2", "--max-tokens", "12", "--temperature", "1.0", "--seed", "0", "--device", "cpu",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads(captured.out)
    assert (summary["generated"], summary["with_rationale"], summary["empty"]) == (3, 3, 0)
    got = load_pairs(out).pairs
    assert [p.id for p in got] == [p.id for p in pairs[:3]]
    for p in got:
        assert p.rationale and p.meta["rationale_source"] == f"hf:{model_dir}"


def test_batched_rationales_reach_their_own_pairs(data_dir: Path):
    # prompts are batched by length, not in pair order: each pair must still get the text it gets when run alone
    from sparsealign.align.rationales import hf_generator

    pairs = load_pairs(HH, limit=12).pairs
    model, tok = tiny_model_and_tokenizer([p.prompt + p.chosen + p.rejected for p in pairs], vocab_size=400,
                                          hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=512)
    model.generation_config.suppress_tokens = [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id]
    with torch.no_grad():  # large weights: greedy continuations depend on the prompt, not one repeated token
        for w in model.parameters():
            w.mul_(6.0)

    generate = hf_generator(model, tok, batch_size=5, max_new_tokens=6, max_input_tokens=400)
    batched: dict[int, str] = {}
    generate(pairs, batched.__setitem__)
    alone = {}
    for i, pair in enumerate(pairs):  # one pair per call: nothing to reorder
        generate([pair], lambda _, text, i=i: alone.__setitem__(i, text))
    assert sorted(batched) == list(range(len(pairs)))
    assert batched == alone
    assert len(set(alone.values())) > len(pairs) // 2  # texts differ by pair, so a misplaced one would show
