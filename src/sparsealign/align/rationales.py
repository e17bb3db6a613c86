"""Rationales: a short text explaining why the chosen response of a pair is preferred (RDPO/RORPO/RSimPO input).

Three sources fill the same `rationale` column of the pairs JSONL:
  * `openai`    -- any OpenAI-compatible chat endpoint (GPT-4o-class API, a local vLLM / llama.cpp server);
  * `hf`        -- any local Hugging Face causal LM, batched `generate`;
  * `execution` -- for code pairs, facts from running the task's tests (see `execution_rationales.py`), no LLM.

The LLM prompt shows the question and both responses in a per-pair random order (seeded by the pair id, so re-runs
reproduce it) and says which one the human preferred; it asks the model to speak of "the preferred response" and
"the other response", never of "A"/"B", so the rationale does not depend on the order it was generated in and the
trainer may show the pair in either order.

Generation is resumable: pairs that already carry a rationale (in the input, or in an existing output file) are
skipped, and the output file is rewritten atomically every `save_every` new rationales and at the end.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sparsealign.data.records import PreferencePair
from sparsealign.errors import UserError

Message = dict[str, str]

RATIONALE_SYSTEM = (
    "You explain human preference judgements between two responses. Be specific, factual and brief."
)

RATIONALE_TEMPLATE = """\
Below are a question and two responses to it. A human judged Response {preferred} to be better than Response {other}.

Explain in two to four sentences why the preferred response is better. Point to concrete differences in correctness, \
helpfulness, harmlessness and clarity. Call them "the preferred response" and "the other response", never \
"Response A" or "Response B". Do not repeat the responses.

[Question]
{question}

[Response A]
{response_a}

[Response B]
{response_b}
"""

# A generator maps pairs to rationale texts; `on_done(i, text)` reports each as it finishes (any order).
Generator = Callable[[list[PreferencePair], Callable[[int, str], None]], None]


def chosen_shown_first(pair_id: str, seed: int = 0) -> bool:
    """Deterministic coin flip per pair: which response is shown as A (avoids a position bias in the rationale)."""
    digest = hashlib.sha256(f"{seed}:{pair_id}".encode()).digest()
    return digest[0] % 2 == 0


def rationale_messages(pair: PreferencePair, *, seed: int = 0) -> list[Message]:
    """The chat prompt for one pair: system + one user turn with the question and both responses."""
    first = chosen_shown_first(pair.id, seed)
    a, b = (pair.chosen, pair.rejected) if first else (pair.rejected, pair.chosen)
    user = RATIONALE_TEMPLATE.format(
        preferred="A" if first else "B", other="B" if first else "A",
        question=pair.prompt.strip(), response_a=a.strip(), response_b=b.strip(),
    )
    return [{"role": "system", "content": RATIONALE_SYSTEM}, {"role": "user", "content": user}]


def clean_rationale(text: str) -> str:
    """Trim whitespace and a leading 'Rationale:' label that some models add."""
    text = text.strip()
    for label in ("Rationale:", "rationale:", "Explanation:"):
        if text.startswith(label):
            text = text[len(label):].strip()
    return text


# ---- sources -------------------------------------------------------------------------------------------------

def openai_generator(client: Any, *, seed: int = 0, **params: Any) -> Generator:
    """Rationales from a `ChatClient` (its cache makes re-runs free and its pool bounds concurrency)."""

    def generate(pairs: list[PreferencePair], on_done: Callable[[int, str], None]) -> None:
        prompts = [rationale_messages(p, seed=seed) for p in pairs]
        client.complete_many(prompts, on_done=lambda i, c: on_done(i, c.text), **params)

    return generate


def hf_generator(model: Any, tokenizer: Any, *, batch_size: int = 8, max_new_tokens: int = 256,
                 max_input_tokens: int = 2048, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int = 0) -> Generator:
    """Rationales from a local causal LM: chat template when the tokenizer has one, else a plain-text layout."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only batched generation continues from the right edge
    tokenizer.truncation_side = "left"  # over-long prompts lose the start of the question, never the instruction
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "max_position_embeddings", None)
    if context:  # prompt + rationale must fit the model's context
        max_input_tokens = max(1, min(max_input_tokens, context - max_new_tokens))

    def render(messages: list[Message]) -> str:
        if getattr(tokenizer, "chat_template", None):
            try:
                return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception:  # some templates (Gemma) refuse a system turn: fold it into the user turn
                merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in messages)}]
                return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\nRationale:"

    def generate(pairs: list[PreferencePair], on_done: Callable[[int, str], None]) -> None:
        texts = [render(rationale_messages(p, seed=seed)) for p in pairs]
        # batched shortest first: prompts of like length share a batch, so little compute goes to padding (real HH
        # pairs run from 170 to 510+ tokens; 1.5x faster on SmolLM2 than dataset order)
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
        torch.manual_seed(seed)
        device = next(model.parameters()).device
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True, truncation=True,
                              max_length=max_input_tokens, add_special_tokens=False).to(device)
            sample = temperature > 0
            with torch.no_grad():
                out = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=tokenizer.pad_token_id,
                    **({"temperature": temperature, "top_p": top_p} if sample else {}),
                )
            new = out[:, batch["input_ids"].shape[1]:]  # (batch, new_tokens): drop the prompt columns
            for i, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                on_done(i, text)

    return generate


# ---- resumable driver ----------------------------------------------------------------------------------------

def missing_rationale(pair: PreferencePair) -> bool:
    return not (pair.rationale or "").strip()


def merge_existing(pairs: Sequence[PreferencePair], existing: Sequence[PreferencePair]) -> int:
    """Copy finished rationales of a previous output into `pairs` (by id); returns how many were reused."""
    done = {p.id: p for p in existing if not missing_rationale(p)}
    reused = 0
    for pair in pairs:
        old = done.get(pair.id)
        if missing_rationale(pair) and old is not None:
            pair.rationale = old.rationale
            pair.meta = {**pair.meta, **{k: v for k, v in old.meta.items() if k.startswith("rationale_")}}
            reused += 1
    return reused


def fill_rationales(
    pairs: list[PreferencePair],
    generator: Generator,
    *,
    source: str,
    save: Callable[[list[PreferencePair]], None],
    save_every: int = 50,
    save_interval_s: float = 30.0,
) -> dict[str, int]:
    """Generate rationales for the pairs that lack one, saving progress periodically with `save(pairs)`."""
    todo = [i for i, p in enumerate(pairs) if missing_rationale(p)]
    state = {"new": 0, "empty": 0, "unsaved": 0, "last_save": time.monotonic()}

    def on_done(k: int, text: str) -> None:
        pair = pairs[todo[k]]
        text = clean_rationale(text)
        if not text:
            state["empty"] += 1  # left missing: a re-run retries it
            return
        pair.rationale = text
        pair.meta = {**pair.meta, "rationale_source": source}
        state["new"] += 1
        state["unsaved"] += 1
        if state["unsaved"] >= save_every or time.monotonic() - state["last_save"] > save_interval_s:
            save(pairs)
            state["unsaved"], state["last_save"] = 0, time.monotonic()
            if sys.stderr.isatty():  # progress for people; logs and error output stay clean
                print(f"rationales: {state['new']}/{len(todo)} generated", file=sys.stderr)

    try:
        generator([pairs[i] for i in todo], on_done)
    finally:
        save(pairs)  # also when the generator fails midway: finished rationales are kept
    return {"todo": len(todo), "generated": state["new"], "empty": state["empty"]}


def output_path_check(data: Path, out: Path) -> None:
    if data.exists() and data.resolve() == out.resolve():
        raise UserError(f"--out {out} is the input file", hint="write rationales to a new file")
