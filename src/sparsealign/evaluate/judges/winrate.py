"""Judge win rates: how often a candidate system's response beats a baseline's on the same prompts.

Two judges:
  * an LLM judge through any OpenAI-compatible endpoint, with a pairwise prompt in the MT-Bench style (explanation,
    then a final "[[A]]", "[[B]]" or "[[C]]" for a tie).  Every item is judged twice, candidate first and baseline
    first; only a verdict that agrees across both orders counts, an inconsistent one (position bias) is a tie, and
    an unparseable verdict is a tie for that order;
  * a reward-model judge (`reward_model.py`): the higher scalar reward wins, equal rewards tie.

Win rate = (wins + ties / 2) / n.  Its CI is the percentile bootstrap over items of the per-item scores
{1, 0.5, 0} (default) or the Wilson interval with ties counted as half a success.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sparsealign.errors import DataError

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


@dataclass
class JudgeItem:
    id: str
    prompt: str
    candidate: str
    baseline: str


def judge_messages(question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
    user = JUDGE_TEMPLATE.format(question=question.strip(), answer_a=answer_a.strip(), answer_b=answer_b.strip())
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """The LAST "[[A]]" / "[[B]]" / "[[C]]" in the judge's output (explanations may quote the format first)."""
    found = _VERDICT.findall(text or "")
    return found[-1] if found else None


def order_outcomes(candidate_first: str | None, candidate_second: str | None) -> tuple[str, str]:
    """The candidate's win/loss/tie in each order (shown as A, then as B); an unparseable verdict is a tie."""
    first = {"A": "win", "B": "loss"}.get(candidate_first or "", "tie")
    second = {"B": "win", "A": "loss"}.get(candidate_second or "", "tie")
    return first, second


def combine_orders(candidate_first: str | None, candidate_second: str | None) -> str:
    """The item's outcome: the verdict both orders agree on, else a tie."""
    first, second = order_outcomes(candidate_first, candidate_second)
    return first if first == second else "tie"


def llm_judge(client: Any, items: Sequence[JudgeItem], **params: Any) -> list[dict[str, Any]]:
    """Judge each item in both orders through a `ChatClient`; one record per item."""
    requests = []
    for it in items:
        requests.append(judge_messages(it.prompt, it.candidate, it.baseline))  # candidate shown as A
        requests.append(judge_messages(it.prompt, it.baseline, it.candidate))  # candidate shown as B
    completions = client.complete_many(requests, **params)
    records = []
    for i, it in enumerate(items):
        v1, v2 = parse_verdict(completions[2 * i].text), parse_verdict(completions[2 * i + 1].text)
        first, second = order_outcomes(v1, v2)
        records.append({"id": it.id, "outcome": first if first == second else "tie", "consistent": first == second,
                        "verdict_candidate_first": v1, "verdict_candidate_second": v2})
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
                    n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Counts, win rate with ties as half, and its CI (bootstrap over items, or Wilson)."""
    from sparsealign.stats.intervals import bootstrap_ci, wilson_interval

    if not outcomes:
        raise ValueError("winrate_summary: no outcomes")
    scores = [SCORE[o] for o in outcomes]
    wins, ties, losses = (sum(o == k for o in outcomes) for k in ("win", "tie", "loss"))
    n = len(scores)
    if ci == "wilson":
        interval = wilson_interval(wins + ties / 2, n, level=level)  # type: ignore[arg-type]
    else:
        interval = bootstrap_ci(scores, n_resamples=n_resamples, level=level, seed=seed)
    return {"n": n, "wins": wins, "ties": ties, "losses": losses, "win_rate": (wins + ties / 2) / n,
            "ci_low": interval.low, "ci_high": interval.high, "ci_level": level, "ci_method": interval.method}


# ---- inputs --------------------------------------------------------------------------------------------------

RESPONSE_KEYS = ("response", "completion", "output")


def read_responses(path: Path) -> dict[str, tuple[str, str]]:
    """{key: (prompt, response)} from a JSONL/JSON of {id?, prompt?, response|completion|output}.

    Records are keyed by `id` when every record has one, else by `prompt`.
    """
    from sparsealign.data.readers import read_rows

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
