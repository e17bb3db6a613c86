"""`sparsealign eval winrate` (LLM or reward-model judge) and `sparsealign eval train-reward-model`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from sparsealign.clients.options import endpoint_options, make_client
from sparsealign.output import emit
from sparsealign.sparse.options import sparsity_options, sparsity_spec


def _items(candidate: str | None, baseline: str | None, pairs: str | None, limit: int | None):
    from sparsealign.errors import UserError
    from sparsealign.evaluate.judges.winrate import items_from_files, items_from_pairs

    if pairs and (candidate or baseline):
        raise UserError("pass either --pairs or --candidate with --baseline, not both")
    if pairs:
        from sparsealign.data.preference import load_pairs

        items = items_from_pairs(load_pairs(pairs, limit=limit).pairs)
    elif candidate and baseline:
        from sparsealign.settings import resolve_data_path

        items = items_from_files(resolve_data_path(candidate), resolve_data_path(baseline))
    else:
        raise UserError("nothing to judge", hint="pass --candidate C.jsonl --baseline B.jsonl, or --pairs P.jsonl")
    return items[:limit] if limit else items


@click.command("winrate")
@click.option("--judge", type=click.Choice(["llm", "reward-model"]), required=True,
              help="llm: pairwise judge through an OpenAI-compatible endpoint (both orders); reward-model: an HF "
                   "sequence-classification reward model (higher reward wins).")
@click.option("--candidate", default=None, help="JSONL of {id, prompt, response} from the system under test.")
@click.option("--baseline", default=None, help="JSONL of {id, prompt, response} from the baseline (matched by id, "
              "else by prompt).")
@click.option("--pairs", default=None, help="A pairs file instead: candidate = chosen, baseline = rejected (the win "
              "rate is then the judge's agreement with the labels).")
@click.option("--responses-model", default=None, metavar="PATH",
              help="With --pairs and --sparsity: judge this model's answers to the pairs' prompts under sparsity "
                   "(candidate) against its own dense answers (baseline).")
@sparsity_options(what="--responses-model")
@click.option("--responses-max-new-tokens", default=128, show_default=True, type=click.IntRange(1),
              help="Tokens per answer of --responses-model.")
@click.option("--model", default=None, help="Judge model name at the endpoint (--judge llm).")
@click.option("--reward-model", default=None, help="Reward model path or hub id (--judge reward-model).")
@endpoint_options
@click.option("--verdict", "verdict_mode", type=click.Choice(["text", "logprobs", "json"]), default="text",
              show_default=True,
              help="--judge llm: read the verdict from the [[A]]/[[B]]/[[C]] marker (text), from the first token's "
                   "log-probabilities of A vs B (logprobs: for small/local judges; needs a server that returns "
                   "top_logprobs, e.g. llama.cpp, vLLM, OpenAI), or from a JSON-schema response (json).")
@click.option("--strict", is_flag=True,
              help="Fail (one-line error, nothing written) when more than 10% of the items got no parsable verdict, instead of marking the "
                   "result unusable.")
@click.option("--max-tokens", "--max-new-tokens", "max_tokens", default=1024, show_default=True,
              type=click.IntRange(1), help="Maximum tokens of each judgement.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Reward-model batch.")
@click.option("--max-length", default=1024, show_default=True, type=click.IntRange(8),
              help="Reward-model tokens per text (truncated from the left).")
@click.option("--device", default="auto", show_default=True, help="Reward-model device (auto, cpu, cuda).")
@click.option("--ci", "ci", type=click.Choice(["bootstrap", "wilson"]), default="bootstrap", show_default=True,
              help="Confidence interval: percentile bootstrap over items, or Wilson (ties as half a win).")
@click.option("--level", default=0.95, show_default=True, type=click.FloatRange(0.5, 0.999), help="CI level.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N items.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Per-item verdicts as JSONL (atomic).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout.")
def winrate(judge: str, candidate: str | None, baseline: str | None, pairs: str | None, responses_model: str | None,
            sparsity: str | None, mode: str, prefill: str, responses_max_new_tokens: int, model: str | None,
            reward_model: str | None, verdict_mode: str, strict: bool, max_tokens: int, batch_size: int, max_length: int, device: str, ci: str,
            level: float, seed: int, limit: int | None, out: str | None, as_json: bool, **endpoint: Any) -> None:
    """Win rate of candidate responses against baseline responses, judged by an LLM or a reward model.

    Win rate = (wins + ties/2) / n with a confidence interval. The LLM judge sees every item twice (candidate as A,
    then as B); verdicts that disagree across the two orders count as ties.  An item without a parsable verdict
    is missing data: counted (`missing`), left out of the rate and its CI, and above 10% missing the result says
    `usable: false` (--strict: an error).

    \b
    Examples:
      sparsealign eval winrate --judge llm --model gpt-4o --candidate dpo.jsonl --baseline sft.jsonl --json
      sparsealign eval winrate --judge reward-model --reward-model runs/rm --candidate dpo.jsonl --baseline sft.jsonl
    """
    from sparsealign.errors import UserError
    from sparsealign.evaluate.judges import winrate as W

    if judge == "llm" and not model:
        raise UserError("--judge llm needs --model", hint="pass the judge model name, e.g. --model gpt-4o")
    if judge == "reward-model" and not reward_model:
        raise UserError("--judge reward-model needs --reward-model PATH",
                        hint="train one with `sparsealign eval train-reward-model` or pass a hub id")
    extra: dict[str, object] = {"judge": judge}
    if responses_model or sparsity:
        if not (responses_model and sparsity and pairs):
            raise UserError("dense-vs-sparse judging needs --responses-model PATH, --sparsity DIR and --pairs FILE")
        from sparsealign.data.preference import load_pairs
        from sparsealign.evaluate.judges.responses import dense_vs_sparse_items
        from sparsealign.sparse.spec import SparsitySpec

        spec = SparsitySpec(**sparsity_spec(sparsity, mode, prefill))
        items, extra["sparsity"] = dense_vs_sparse_items(responses_model, load_pairs(pairs, limit=limit).pairs, spec,
                                                         max_new_tokens=responses_max_new_tokens, device=device,
                                                         batch_size=batch_size)
    else:
        items = _items(candidate, baseline, pairs, limit)
    if judge == "llm":
        client = make_client(model, **endpoint)
        records = W.llm_judge(client, items, verdict=verdict_mode, max_tokens=max_tokens)
        client.close()
        extra.update(model=model, verdict=verdict_mode, requests=client.stats.requests,
                     cache_hits=client.stats.cache_hits, inconsistent=sum(r["consistent"] is False for r in records),
                     unparsed=sum(r[k] is None for r in records
                                  for k in ("verdict_candidate_first", "verdict_candidate_second")))
    else:
        from sparsealign.evaluate.judges.reward_model import RewardScorer, load_reward_model

        rm, tok = load_reward_model(reward_model, device=device)
        records = W.reward_model_judge(RewardScorer(rm, tok, batch_size=batch_size, max_length=max_length), items)
        extra["model"] = reward_model
    summary = {**extra, **W.winrate_summary([r["outcome"] for r in records], ci=ci, level=level, seed=seed)}
    warning = None
    if not summary["usable"]:
        message = (f"{summary['missing']}/{summary['items']} items have no parsable verdict (> 10%): the win rate "
                   "is not usable")
        hint = "try --verdict logprobs (or json) for a small judge, or a larger judge model"
        if strict:
            raise UserError(message, hint=hint)
        warning = f"warning: {message} (fix: {hint})"
    if out:
        from sparsealign.io import atomic_write_text

        rows = W.record_dicts(items, records)
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        summary["out"] = out
    if as_json:
        print(json.dumps(summary))
    elif summary["win_rate"] is None:
        print(f"no verdicts: all {summary['items']} items missing (unparsed judge output)")
    else:
        print(f"win rate {summary['win_rate']:.3f} [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] "
              f"({summary['wins']} wins, {summary['ties']} ties, {summary['losses']} losses, n={summary['n']}; "
              f"{summary['missing']} missing)")
    if warning:
        print(warning, file=sys.stderr)


@click.command("train-reward-model")
@click.option("--data", required=True, help="Preference pairs to train on (any format `data inspect` reads).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Directory for the trained reward model (safetensors + tokenizer), written atomically.")
@click.option("--base-model", default="tiny", show_default=True,
              help="HF checkpoint (path or hub id; a causal LM gets a new score head) or `tiny` (a small local "
                   "Llama with a tokenizer trained on the pairs).")
@click.option("--eval-data", default=None, help="Held-out pairs for accuracy before/after.")
@click.option("--epochs", default=1, show_default=True, type=click.IntRange(1), help="Passes over the pairs.")
@click.option("--lr", default=1e-4, show_default=True, type=click.FloatRange(0, min_open=True), help="AdamW rate.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Pairs per step.")
@click.option("--max-length", default=512, show_default=True, type=click.IntRange(8),
              help="Tokens per text (truncated from the left).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N training pairs.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--seed", default=0, show_default=True, help="Seed (init, shuffling).")
@click.option("--threads", default=None, type=click.IntRange(1), help="torch CPU threads.")
@click.option("--tiny-hidden", default=64, show_default=True, type=click.IntRange(8),
              help="Hidden size of the `tiny` base model.")
@click.option("--tiny-layers", default=2, show_default=True, type=click.IntRange(1),
              help="Layers of the `tiny` base model.")
@click.option("--tiny-vocab", default=512, show_default=True, type=click.IntRange(260),
              help="BPE vocabulary of the `tiny` base model's tokenizer (trained on the pairs).")
@click.option("--json", "as_json", is_flag=True, help="Print the training metrics as one JSON object.")
def train_reward_model_cmd(data: str, out: str, base_model: str, eval_data: str | None, epochs: int, lr: float,
                           batch_size: int, max_length: int, limit: int | None, device: str, seed: int,
                           threads: int | None, tiny_hidden: int, tiny_layers: int, tiny_vocab: int,
                           as_json: bool) -> None:
    """Train a reward model with the Bradley-Terry objective -log sigma(r(chosen) - r(rejected))."""
    from sparsealign.data.preference import load_pairs
    from sparsealign.evaluate.judges.reward_model import train_reward_model

    if threads:
        import torch

        torch.set_num_threads(threads)
    pairs = load_pairs(data, limit=limit).pairs
    held_out = load_pairs(eval_data).pairs if eval_data else None
    _, _, metrics = train_reward_model(pairs, base_model, out_dir=out, epochs=epochs, lr=lr, batch_size=batch_size,
                                       max_length=max_length, seed=seed, eval_pairs=held_out, device=device,
                                       tiny_kwargs={"hidden_size": tiny_hidden, "num_layers": tiny_layers,
                                                    "num_heads": max(1, tiny_hidden // 16), "vocab_size": tiny_vocab})
    metrics["out"] = out
    emit(metrics, as_json, [f"wrote {out}: pair accuracy {metrics['train_accuracy_start']:.3f} -> "
                            f"{metrics['train_accuracy_end']:.3f} on {metrics['pairs']} training pairs"],
         human_to_stderr=True)


def register(cli: click.Group) -> None:
    """Add `eval winrate` and `eval train-reward-model` to the shared `eval` group."""
    group = cli.commands["eval"]
    group.add_command(winrate)  # type: ignore[attr-defined]
    group.add_command(train_reward_model_cmd)  # type: ignore[attr-defined]
