"""Packed pair scoring (prompt once, rejected blind to chosen) equals two-row scoring: dense on a tiny model, and
under static and dynamic activation sparsity on stories260K (the controller continues the rejected response from
the prompt's state, read from the 4D mask)."""

from __future__ import annotations

import pytest
import torch

from sparse_helpers import load_code_and_dialogue, load_stories
from sparsealign.align.logps import (
    PairCollator,
    TokenizeSettings,
    encode_pairs,
    score_features,
    sequence_logps,
)
from sparsealign.align.packed import pack_pairs
from sparsealign.data.preference import load_pairs
from sparsealign.models.tiny import tiny_model_and_tokenizer
from sparsealign.sparse.calibration.calibrate import calibrate
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime import state as runtime
from sparsealign.sparse.runtime.patch import apply_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")
KEYS = ("chosen_logps", "chosen_n", "rejected_logps", "rejected_n")


@pytest.fixture(scope="module")
def hh_pairs(data_dir):
    return load_pairs(data_dir / "hh-rlhf/helpful-base/test.jsonl.gz", warn=False).pairs[:24]


@torch.no_grad()
def two_row_scores(model, feats, pad_id, batch_size=8):
    """The reference: chosen and rejected as rows of their own (`PairCollator` + `sequence_logps`), in order."""
    cols = {k: [] for k in KEYS}
    for start in range(0, len(feats), batch_size):
        batch = PairCollator(pad_id)(feats[start:start + batch_size])
        logp, n = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
        (chosen, rejected), (n_chosen, n_rejected) = logp.chunk(2), n.chunk(2)
        for key, val in zip(KEYS, (chosen, n_chosen, rejected, n_rejected), strict=True):
            cols[key].append(val)
    return {k: torch.cat(v) for k, v in cols.items()}


def assert_same_scores(packed, reference, atol):
    for key in KEYS:
        assert packed[key].shape == reference[key].shape
        assert torch.allclose(packed[key].double(), reference[key].double(), atol=atol, rtol=0), key


def test_layout_positions_mask_and_sources():
    batch = pack_pairs([{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [10]},
                        {"prompt_ids": [5], "chosen_ids": [], "rejected_ids": [11, 12]}], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 10], [5, 11, 12, 0, 0, 0]]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 2]  # rejected restarts after the prompt
    m = batch.attention_mask[0, 0]
    assert m[5].tolist() == [True, True, False, False, False, True]  # blind to the chosen response
    assert batch.sources.tolist() == [1, 2, 3, 1, 0, 1]  # first rejected token is predicted by the prompt's end
    assert batch.targets.tolist() == [7, 8, 9, 10, 11, 12]
    assert not batch.attention_mask[1, 0, 4, 4]  # padding does not attend to itself: not a real position
    valid, parents = runtime.tree_positions(batch.attention_mask)
    assert valid.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert parents[0].tolist() == [-1, 0, 1, 2, 3, 1]


def test_packed_equals_two_rows_dense(hh_pairs):
    texts = [p.prompt + p.chosen + p.rejected for p in hh_pairs]
    model, tok = tiny_model_and_tokenizer(texts, vocab_size=384, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    feats, n_cut = encode_pairs(tok, hh_pairs, TokenizeSettings(max_length=160, max_prompt_length=64))
    assert n_cut > 0  # truncated pairs are in the batch too
    packed = score_features(model.eval(), feats, tok.pad_token_id, batch_size=8)
    assert_same_scores(packed, two_row_scores(model, feats, tok.pad_token_id), atol=1e-4)
    assert (packed["chosen_logps"] < 0).all() and (packed["chosen_n"] > 0).all()


@pytest.fixture(scope="module")
def stories_case(data_dir, hh_pairs):
    model, tok = load_stories(data_dir)
    tok.padding_side = "right"
    code, _ = load_code_and_dialogue(data_dir)
    art = calibrate(model, tok, code[500:540], SparsityConfig(target_sparsity=0.5, max_length=128))
    feats, _ = encode_pairs(tok, hh_pairs[:12], TokenizeSettings(max_length=128, max_prompt_length=64,
                                                                 chat_template=False))
    return model, tok, art, feats


@torch.no_grad()
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_packed_equals_two_rows_under_sparsity(stories_case, mode, monkeypatch):
    model, tok, art, feats = stories_case
    pad = tok.pad_token_id or 0
    with apply_sparsity(model, art, mode, "sparse") as handle:
        reference = two_row_scores(model, feats, pad, batch_size=4)
        handle.reset()
        packed = score_features(model, feats, pad, batch_size=4)
        assert 0.3 < handle.stats()["realized_sparsity"] < 0.7  # really sparse, padding not counted
        assert_same_scores(packed, reference, atol=2e-3)
        if mode == "dynamic":  # control: a controller that ran on through the chosen response scores differently
            monkeypatch.setattr(runtime, "tree_positions", lambda mask: (mask[:, 0].diagonal(dim1=-2, dim2=-1), None))
            handle.reset()
            drifted = score_features(model, feats, pad, batch_size=4)
            assert not torch.allclose(drifted["rejected_logps"], reference["rejected_logps"], atol=2e-3)
            assert torch.allclose(drifted["chosen_logps"], reference["chosen_logps"], atol=2e-3)
