"""Per-format normalisers: one raw record (a dict) -> one `PreferencePair`, or a `RowProblem` saying why not.

Formats:
    hh-rlhf            {"chosen": transcript, "rejected": transcript}; prompt = text up to and including the last
                       "\\n\\nAssistant:", response = the rest; the prompt turns are also kept as chat messages.
    ultrafeedback      {"prompt", "chosen", "rejected"} with string or message-list responses; scores top-level
                       (`score_chosen`) or under `metadata`.
    orca-intel         {"system", "question", "chosen", "rejected"} (Intel/orca_dpo_pairs).
    openai-preference  {"input": {"messages"}, "preferred_output": [...], "non_preferred_output": [...]}.
    generic            {"prompt", "chosen", "rejected"[, "rationale", "score_chosen", "score_rejected", "id", ...]};
                       what `write_pairs_jsonl` writes, and any CSV/Parquet table with those columns.  This is also
                       TRL's standard explicit-prompt format (texts kept as they are: " blue." keeps its space).
    trl-explicit       TRL's conversational explicit-prompt format: {"prompt": [messages], "chosen": [assistant
                       message], "rejected": [assistant message]}.
    trl-implicit       TRL's implicit-prompt format: {"chosen", "rejected"} only, either whole texts whose common
                       prefix is the prompt (standard) or message lists whose common leading turns are the prompt
                       (conversational), as `trl.extract_prompt` splits them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from sparsealign.data.records import Message, PreferencePair

FORMATS = ("hh-rlhf", "ultrafeedback", "orca-intel", "openai-preference", "generic", "trl-explicit", "trl-implicit")
TRL_FORMATS = ("trl-explicit", "trl-implicit")
HH_CUE = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class RowProblem(Exception):
    """Why a record gives no pair. `degenerate` problems are real-data quirks (skipped by default); the others are
    broken rows (an error unless --skip-invalid)."""

    def __init__(self, reason: str, detail: str, *, degenerate: bool = False):
        super().__init__(detail)
        self.reason, self.detail, self.degenerate = reason, detail, degenerate


def detect_format(record: dict[str, Any]) -> str | None:
    """Guess the format from one record's fields; None when nothing fits."""
    keys = set(record)
    if {"input", "preferred_output", "non_preferred_output"} <= keys:
        return "openai-preference"
    if {"question", "chosen", "rejected"} <= keys:
        return "orca-intel"
    if {"chosen", "rejected"} <= keys and "prompt" not in keys:
        chosen = record["chosen"]
        if isinstance(chosen, str) and (HH_CUE in chosen or chosen.startswith(HH_HUMAN)):
            return "hh-rlhf"  # a transcript opening with a Human turn is HH even when its Assistant turn is missing
        return "trl-implicit" if isinstance(chosen, (str, list)) else None
    if {"prompt", "chosen", "rejected"} <= keys:
        if isinstance(record["prompt"], list):  # UltraFeedback's prompt is text; a message-list prompt is TRL's
            return "trl-explicit"
        if isinstance(record["chosen"], list) or keys & {"metadata", "prompt_id", "source_index"}:
            return "ultrafeedback"
        return "generic"
    return None


# -- field helpers ---------------------------------------------------------------------------------------------------
def _field(rec: dict[str, Any], key: str) -> Any:
    if key not in rec or rec[key] is None:
        raise RowProblem("missing_field", f"missing required field '{key}'")
    return rec[key]


def _text(rec: dict[str, Any], key: str) -> str:
    value = _field(rec, key)
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _score(value: Any, key: str) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowProblem("wrong_type", f"field '{key}' must be a number, got bool")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RowProblem("wrong_type", f"field '{key}' must be a number, got {value!r:.40}") from None
    if math.isnan(out):  # pandas writes a missing score as NaN
        return None
    if math.isinf(out):
        raise RowProblem("wrong_type", f"field '{key}' must be a finite number, got {out}")
    return out


def _messages(value: Any, key: str) -> list[Message]:
    if isinstance(value, str):  # CSV cells hold JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem("wrong_type", f"field '{key}' must be a list of messages") from None
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise RowProblem("wrong_type", f"field '{key}' must be a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def render_prompt(messages: list[Message]) -> str:
    """Plain-text prompt for chat messages: one user turn -> its text; system + user -> both, blank-line separated;
    longer conversations -> an HH-style transcript ending in the assistant cue."""
    roles = [m["role"] for m in messages]
    if roles == ["user"]:
        return messages[0]["content"]
    if roles == ["system", "user"]:
        return f"{messages[0]['content']}\n\n{messages[1]['content']}"
    names = {"user": "Human", "assistant": "Assistant", "system": "System"}
    return "".join(f"\n\n{names.get(m['role'], m['role'])}: {m['content']}" for m in messages) + HH_CUE


def _response(value: Any, key: str) -> tuple[str, list[Message] | None]:
    """A response given as text, or as a message list whose last message is the assistant's answer (the earlier
    messages, if any, are the prompt turns)."""
    if isinstance(value, str):
        return value, None
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"field '{key}' must be a string or a message list, got {type(value).__name__}")
    msgs = _messages(value, key)
    if not msgs or msgs[-1]["role"] != "assistant":
        raise RowProblem("wrong_type", f"field '{key}' must end with an assistant message")
    return msgs[-1]["content"], msgs[:-1]


# -- per-format normalisers --------------------------------------------------------------------------------------------
def split_hh(transcript: str, key: str) -> tuple[str, str]:
    cut = transcript.rfind(HH_CUE)
    if cut < 0:
        what = "a broken HH row: it opens with a '\\n\\nHuman:' turn" if transcript.startswith(HH_HUMAN) \
            else "not an HH transcript"
        raise RowProblem("wrong_type", f"field '{key}' has no '\\n\\nAssistant:' turn ({what})")
    cut += len(HH_CUE)
    return transcript[:cut], transcript[cut:]


def hh_messages(prompt: str) -> list[Message]:
    """The prompt's turns as chat messages (the trailing empty assistant cue is dropped)."""
    parts = _HH_TURN.split(prompt)
    out: list[Message] = []
    if parts[0].strip():
        out.append({"role": "system", "content": parts[0].strip()})
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        out.append({"role": _ROLES[role], "content": content.strip()})
    if out and out[-1]["role"] == "assistant" and not out[-1]["content"]:
        out.pop()
    return out


def _hh(rec: dict[str, Any]) -> dict[str, Any]:
    prompt, chosen = split_hh(_text(rec, "chosen"), "chosen")
    prompt_r, rejected = split_hh(_text(rec, "rejected"), "rejected")
    if prompt != prompt_r:
        raise RowProblem("prompt_mismatch", "chosen and rejected transcripts have different prompts", degenerate=True)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "messages": hh_messages(prompt)}


def _prompt_chosen_rejected(rec: dict[str, Any], fmt: str) -> dict[str, Any]:
    raw_prompt = _field(rec, "prompt")
    messages = _messages(raw_prompt, "prompt") if not isinstance(raw_prompt, str) else None
    prompt = raw_prompt if isinstance(raw_prompt, str) else render_prompt(messages or [])
    chosen, turns_c = _response(_field(rec, "chosen"), "chosen")
    rejected, turns_r = _response(_field(rec, "rejected"), "rejected")
    if turns_c is not None and turns_r is not None and turns_c != turns_r:
        raise RowProblem("prompt_mismatch", "chosen and rejected conversations have different prompts",
                         degenerate=True)
    turns = turns_c if turns_c is not None else turns_r
    if messages is None and turns:
        messages = turns
    if messages is None and fmt == "generic" and rec.get("messages") not in (None, ""):
        messages = _messages(rec["messages"], "messages")
    meta = rec.get("metadata") if isinstance(rec.get("metadata"), dict) else {}
    out: dict[str, Any] = {
        "prompt": prompt, "chosen": chosen, "rejected": rejected, "messages": messages,
        "score_chosen": _score(rec.get("score_chosen", meta.get("score_chosen")), "score_chosen"),
        "score_rejected": _score(rec.get("score_rejected", meta.get("score_rejected")), "score_rejected"),
    }
    rationale = rec.get("rationale")
    if rationale not in (None, ""):
        if not isinstance(rationale, str):
            raise RowProblem("wrong_type", f"field 'rationale' must be a string, got {type(rationale).__name__}")
        out["rationale"] = rationale
    if fmt == "generic":
        for key in ("id", "source"):
            if rec.get(key) not in (None, ""):
                out[key] = str(rec[key])
        extra = rec.get("meta")
        if isinstance(extra, str) and extra:
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError:
                extra = None
        if isinstance(extra, dict):
            out["meta"] = extra
    else:
        out["meta"] = {k: rec[k] for k in ("prompt_id", "source_index") if k in rec}
    return out


def _orca_intel(rec: dict[str, Any]) -> dict[str, Any]:
    system = rec.get("system") or ""
    if not isinstance(system, str):
        raise RowProblem("wrong_type", f"field 'system' must be a string, got {type(system).__name__}")
    question = _text(rec, "question")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return {"prompt": render_prompt(messages), "chosen": _text(rec, "chosen"), "rejected": _text(rec, "rejected"),
            "messages": messages}


def _openai_preference(rec: dict[str, Any]) -> dict[str, Any]:
    inp = _field(rec, "input")
    if not isinstance(inp, dict):
        raise RowProblem("wrong_type", f"field 'input' must be an object, got {type(inp).__name__}")
    messages = _messages(_field(inp, "messages"), "input.messages")
    if not messages:
        raise RowProblem("missing_field", "field 'input.messages' is empty")
    chosen, _ = _response(_field(rec, "preferred_output"), "preferred_output")
    rejected, _ = _response(_field(rec, "non_preferred_output"), "non_preferred_output")
    return {"prompt": render_prompt(messages), "chosen": chosen, "rejected": rejected, "messages": messages}


def _common_prefix(chosen: str, rejected: str) -> int:
    """Where `trl.extract_prompt` cuts two texts: after their common prefix, but a space just before the first
    difference stays with the responses; when one text is a prefix of the other, TRL's loop ends one character
    short, so that last shared character is both responses' start (kept, so the pairs equal TRL's)."""
    n, limit = 0, min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    if n == limit:
        return max(limit - 1, 0)
    return n - 1 if n > 0 and chosen[n - 1] == " " else n


def _trl_implicit(rec: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _field(rec, "chosen"), _field(rec, "rejected")
    if isinstance(chosen, str) and isinstance(rejected, str):
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            if text.startswith(HH_HUMAN) and HH_CUE not in text:  # a broken HH row, not a prompt to split mid-word
                split_hh(text, key)
        cut = _common_prefix(chosen, rejected)
        return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
    if not isinstance(chosen, list) or not isinstance(rejected, list):
        raise RowProblem("wrong_type", "fields 'chosen' and 'rejected' must both be texts or both message lists")
    msgs_c, msgs_r = _messages(chosen, "chosen"), _messages(rejected, "rejected")
    for key, msgs in (("chosen", msgs_c), ("rejected", msgs_r)):
        if not msgs or msgs[-1]["role"] != "assistant":
            raise RowProblem("wrong_type", f"field '{key}' must end with an assistant message")
    turns = msgs_c[:-1]
    if turns != msgs_r[:-1]:
        raise RowProblem("prompt_mismatch", "chosen and rejected conversations have different prompts",
                         degenerate=True)
    if not turns:
        raise RowProblem("missing_field", "fields 'chosen' and 'rejected' hold no prompt turn before the answer")
    return {"prompt": render_prompt(turns), "chosen": msgs_c[-1]["content"], "rejected": msgs_r[-1]["content"],
            "messages": turns}


def _trl_scores(rec: dict[str, Any]) -> dict[str, Any]:
    return {"score_chosen": _score(rec.get("score_chosen"), "score_chosen"),
            "score_rejected": _score(rec.get("score_rejected"), "score_rejected")}


def normalise(record: dict[str, Any], fmt: str, *, pair_id: str, source: str) -> PreferencePair:
    """One raw record of format `fmt` -> a pair; raises RowProblem (broken or degenerate)."""
    if fmt == "hh-rlhf":
        fields = _hh(record)
    elif fmt == "trl-implicit":
        fields = {**_trl_implicit(record), **_trl_scores(record)}
    elif fmt == "orca-intel":
        fields = _orca_intel(record)
    elif fmt == "openai-preference":
        fields = _openai_preference(record)
    else:
        fields = _prompt_chosen_rejected(record, fmt)
    if fmt not in ("generic", *TRL_FORMATS):  # only the space that follows a role cue is dropped; TRL's texts are
        # concatenated as they are (prompt "The sky is" + chosen " blue."), so they keep it
        fields["chosen"], fields["rejected"] = fields["chosen"].strip(), fields["rejected"].strip()
    fields.setdefault("id", pair_id)
    fields.setdefault("source", source)
    pair = PreferencePair(**fields)
    reason = degenerate_reason(pair)
    if reason:
        raise RowProblem(reason, _DEGENERATE[reason], degenerate=True)
    return pair


_DEGENERATE = {
    "empty_response": "chosen or rejected response is empty",
    "identical": "chosen and rejected responses are identical",
}


def degenerate_reason(pair: PreferencePair) -> str | None:
    if not pair.chosen.strip() or not pair.rejected.strip():
        return "empty_response"
    if pair.chosen.strip() == pair.rejected.strip():
        return "identical"
    return None
