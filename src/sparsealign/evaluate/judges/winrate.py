"""Judge win rates: how often a candidate system's response beats a baseline's on the same prompts.

Two judges:
  * an LLM judge through any OpenAI-compatible endpoint.  Every item is judged twice, candidate first and baseline
    first; only a verdict that agrees across both orders counts, an inconsistent one (position bias) is a tie.
    How the verdict is read (`verdict=`):
      text      MT-Bench-style prompt (explanation, then "[[A]]", "[[B]]" or "[[C]]" for a tie), last marker wins;
      logprobs  for small/local judges that never write the marker: the judge is asked for one letter and the
                verdict is the likelier of "A" and "B" among the first token's `top_logprobs` (OpenAI chat
                `logprobs`, also served by llama.cpp and vLLM); neither letter among them = unparsed;
      json      a JSON-schema response ({"verdict": "A"|"B"|"C"}) where the server supports `response_format`.
    An unparsed verdict (in either order) makes the item MISSING: counted, excluded from the rate and its CI,
    never a tie.  Above `MAX_MISSING` (10%) of items missing the result is marked unusable (`--strict`: an error);
  * a reward-model judge (`reward_model.py`): the higher scalar reward wins, equal rewards tie.

Win rate = (wins + ties / 2) / n over the judged items.  Its CI is the percentile bootstrap over items of the
per-item scores {1, 0.5, 0} (default) or the Wilson interval with ties counted as half a success.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsealign.data.readers import read_rows
from sparsealign.errors import DataError
from sparsealign.stats.intervals import bootstrap_ci, wilson_interval

JUDGE_SYSTEM = (
    "You are an impartial judge. Compare the answers two AI assistants gave to the user question shown below and "
    "decide which one follows the user's instructions and answers the question better. Weigh helpfulness, "
    "relevance, accuracy, depth, creativity and level of detail. The order in which the answers are shown must not "
    "sway you, nor must their length or the assistants' names; be as objective as you can. First explain your "
    'comparison briefly, then give your final verdict on the last line in exactly this form: "[[A]]" if assistant '
    'A is better, "[[B]]" if assistant B is better, "[[C]]" for a tie.'
)

JUDGE_TEMPLATE = """\
[User Question]
{question}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}
MISSING = "missing"
MAX_MISSING = 0.10  # above this fraction of unjudged items the win rate is marked unusable
VERDICT_MODES = ("text", "logprobs", "json")
LETTER_SYSTEM = JUDGE_SYSTEM.split(" First explain")[0] + (
    " Reply with one letter only: A if assistant A's answer is better, B if assistant B's answer is better.")
JSON_SYSTEM = JUDGE_SYSTEM.split(" First explain")[0] + (
    ' Reply with a JSON object {"verdict": "A"} if assistant A is better, "B" if B is better, "C" for a tie.')
VERDICT_SCHEMA = {"type": "json_schema", "json_schema": {"name": "verdict", "strict": True, "schema": {
    "type": "object", "properties": {"verdict": {"type": "string", "enum": ["A", "B", "C"]}},
    "required": ["verdict"], "additionalProperties": False}}}


@dataclass
class JudgeItem:
    id: str
    prompt: str
    candidate: str
    baseline: str


def judge_messages(question: str, answer_a: str, answer_b: str, verdict: str = "text") -> list[dict[str, str]]:
    user = JUDGE_TEMPLATE.format(question=question.strip(), answer_a=answer_a.strip(), answer_b=answer_b.strip())
    system = {"text": JUDGE_SYSTEM, "logprobs": LETTER_SYSTEM, "json": JSON_SYSTEM}[verdict]
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def verdict_params(verdict: str, max_tokens: int) -> dict[str, Any]:
    """Request parameters of each verdict mode (greedy; one token suffices for the letter)."""
    if verdict == "logprobs":
        return {"temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": 20}
    if verdict == "json":
        return {"temperature": 0.0, "max_tokens": min(max_tokens, 32), "response_format": VERDICT_SCHEMA}
    return {"temperature": 0.0, "max_tokens": max_tokens}


def letter_probs(top_logprobs: Sequence[dict[str, Any]] | None) -> tuple[float, float]:
    """(P("A"), P("B")) of the first generated token, summed over spellings (" A", "a", ...)."""
    import math

    p = {"A": 0.0, "B": 0.0}
    for cand in top_logprobs or ():
        letter = str(cand.get("token", "")).strip().upper()
        if letter in p and isinstance(cand.get("logprob"), (int, float)):
            p[letter] += math.exp(cand["logprob"])
    return p["A"], p["B"]


def read_verdict(completion: Any, verdict: str) -> tuple[str | None, float | None]:
    """(verdict letter or None when unparsed, P(A) / (P(A) + P(B)) in logprobs mode)."""
    import json

    if verdict == "logprobs":
        pa, pb = letter_probs(getattr(completion, "top_logprobs", None))
        if pa + pb == 0:
            return None, None
        return ("A" if pa > pb else "B" if pb > pa else "C"), pa / (pa + pb)
    if verdict == "json":
        try:
            value = json.loads(completion.text).get("verdict")
        except (json.JSONDecodeError, AttributeError):
            return None, None
        return (value if value in ("A", "B", "C") else None), None
    return parse_verdict(completion.text), None


def parse_verdict(text: str) -> str | None:
    """The LAST "[[A]]" / "[[B]]" / "[[C]]" in the judge's output (explanations may quote the format first)."""
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


def order_outcomes(candidate_first: str | None, candidate_second: str | None) -> tuple[str, str]:
    """The candidate's win/loss/tie in each order (shown as A, then as B); an unparsed verdict is missing."""
    first = {"A": "win", "B": "loss", "C": "tie"}.get(candidate_first or "", MISSING)
    second = {"B": "win", "A": "loss", "C": "tie"}.get(candidate_second or "", MISSING)
    return first, second


def combine_orders(candidate_first: str | None, candidate_second: str | None) -> str:
    """The item's outcome: missing if either order is unparsed, else the verdict both agree on, else a tie."""
    first, second = order_outcomes(candidate_first, candidate_second)
    if MISSING in (first, second):
        return MISSING
    return first if first == second else "tie"


def llm_judge(client: Any, items: Sequence[JudgeItem], verdict: str = "text", max_tokens: int = 1024
              ) -> list[dict[str, Any]]:
    """Judge each item in both orders through a `ChatClient`; one record per item."""
    if verdict not in VERDICT_MODES:
        raise ValueError(f"unknown verdict mode {verdict!r}; choose one of {', '.join(VERDICT_MODES)}")
    requests = []
    for it in items:
        requests.append(judge_messages(it.prompt, it.candidate, it.baseline, verdict))  # candidate shown as A
        requests.append(judge_messages(it.prompt, it.baseline, it.candidate, verdict))  # candidate shown as B
    completions = client.complete_many(requests, **verdict_params(verdict, max_tokens))
    records = []
    for i, it in enumerate(items):
        (v1, p1), (v2, p2) = (read_verdict(completions[2 * i + k], verdict) for k in (0, 1))
        first, second = order_outcomes(v1, v2)
        outcome = combine_orders(v1, v2)
        rec = {"id": it.id, "outcome": outcome, "consistent": None if outcome == MISSING else first == second,
               "verdict_candidate_first": v1, "verdict_candidate_second": v2}
        if verdict == "logprobs":
            rec.update(p_a_candidate_first=p1, p_a_candidate_second=p2)
        records.append(rec)
    return records


def reward_model_judge(scorer: Any, items: Sequence[JudgeItem]) -> list[dict[str, Any]]:
    """Score candidate and baseline with a reward model; the higher reward wins."""
    prompts = [it.prompt for it in items]
    cand = scorer.score(prompts, [it.candidate for it in items])
    base = scorer.score(prompts, [it.baseline for it in items])
    records = []
    for it, c, b in zip(items, cand, base, strict=True):
        outcome = "win" if c > b else "loss" if c < b else "tie"
        records.append({"id": it.id, "outcome": outcome, "reward_candidate": c, "reward_baseline": b})
    return records


def winrate_summary(outcomes: Sequence[str], *, ci: str = "bootstrap", level: float = 0.95,
                    n_resamples: int = 2000, seed: int = 0, max_missing: float = MAX_MISSING) -> dict[str, Any]:
    """Counts, win rate with ties as half and its CI (bootstrap over items, or Wilson) over the judged items;
    missing items are counted apart and make the result unusable above `max_missing`."""

    if not outcomes:
        raise ValueError("winrate_summary: no outcomes")
    judged = [o for o in outcomes if o != MISSING]
    missing = len(outcomes) - len(judged)
    wins, ties, losses = (sum(o == k for o in judged) for k in ("win", "tie", "loss"))
    n = len(judged)
    out: dict[str, Any] = {"n": n, "items": len(outcomes), "missing": missing,
                           "missing_fraction": missing / len(outcomes), "wins": wins, "ties": ties,
                           "losses": losses, "win_rate": None, "ci_low": None, "ci_high": None, "ci_level": level,
                           "ci_method": None, "usable": missing / len(outcomes) <= max_missing and n > 0}
    if n:
        if ci == "wilson":
            interval = wilson_interval(wins + ties / 2, n, level=level)  # type: ignore[arg-type]
        else:
            interval = bootstrap_ci([SCORE[o] for o in judged], n_resamples=n_resamples, level=level, seed=seed)
        out.update(win_rate=(wins + ties / 2) / n, ci_low=interval.low, ci_high=interval.high,
                   ci_method=interval.method)
    return out


# ---- inputs --------------------------------------------------------------------------------------------------

RESPONSE_KEYS = ("response", "completion", "output")


def read_responses(path: Path) -> dict[str, tuple[str, str]]:
    """{key: (prompt, response)} from a JSONL/JSON of {id?, prompt?, response|completion|output}.

    Records are keyed by `id` when every record has one, else by `prompt`.
    """

    rows: list[tuple[int | None, dict[str, Any]]] = []
    for row in read_rows(path):
        line, prefix = row.where()
        if row.error:
            raise DataError(path, f"{prefix}{row.detail or row.error}", line=line, hint=row.hint())
        value = row.value
        if not isinstance(value, dict):
            raise DataError(path, f"{prefix}expected an object with prompt/id and response", line=line)
        if not any(isinstance(value.get(k), str) for k in RESPONSE_KEYS):
            raise DataError(path, f"{prefix}no response field (one of {', '.join(RESPONSE_KEYS)})", line=line,
                            hint='write records like {"id": "1", "prompt": "...", "response": "..."}')
        rows.append((line, value))
    if not rows:
        raise DataError(path, "no records", hint="pass a file with one {id, prompt, response} per line")
    by_id = all(r.get("id") is not None for _, r in rows)
    out: dict[str, tuple[str, str]] = {}
    for line, r in rows:
        key = str(r["id"]) if by_id else r.get("prompt")
        if not isinstance(key, str):
            raise DataError(path, "record has neither id nor prompt", line=line,
                            hint="give every record an id (or a prompt) to match it with the other file")
        if key in out:
            raise DataError(path, f"duplicate {'id' if by_id else 'prompt'} {key[:60]!r}", line=line,
                            hint="give every record its own id")
        response = next(r[k] for k in RESPONSE_KEYS if isinstance(r.get(k), str))
        out[key] = (str(r.get("prompt") or ""), response)
    return out


def items_from_files(candidate: Path, baseline: Path) -> list[JudgeItem]:
    """Match the two files by id (or prompt); every candidate item must have a baseline and vice versa."""
    cand, base = read_responses(candidate), read_responses(baseline)
    missing = [k for k in cand if k not in base]
    if missing or len(cand) != len(base):
        extra = [k for k in base if k not in cand]
        which, key, path = ("baseline", missing[0], baseline) if missing else ("candidate", extra[0], candidate)
        raise DataError(path, f"no {which} record for {key[:60]!r} ({len(missing)} candidate and {len(extra)} "
                        "baseline records unmatched)", hint="both files must hold the same ids (or prompts)")
    items = []
    for key, (prompt, response) in cand.items():
        base_prompt, base_response = base[key]
        if not (prompt or base_prompt):
            raise DataError(candidate, f"record {key!r} has no prompt in either file",
                            hint="the judge needs the question: add a prompt field")
        items.append(JudgeItem(key, prompt or base_prompt, response, base_response))
    return items


def items_from_pairs(pairs: Sequence[Any]) -> list[JudgeItem]:
    """A pairs file as judge input: candidate = chosen, baseline = rejected (win rate = agreement with labels)."""
    return [JudgeItem(p.id, p.prompt, p.chosen, p.rejected) for p in pairs]


def record_dicts(items: Sequence[JudgeItem], records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-item output rows: the inputs next to the verdicts."""
    return [{**asdict(it), **rec} for it, rec in zip(items, records, strict=True)]
