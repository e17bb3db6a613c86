"""Pretraining recipe of the embedded micro family: real local code in, cached Hugging Face checkpoints out.

Corpus (all local, deterministic order):
  1. the Python standard library sources of the running interpreter (`*.py` under `sysconfig` "stdlib", without
     site-packages and test suites), ordered by a hash of their relative path and cut at a byte budget;
  2. MBPP train/validation/prompt tasks (never the test split) as lm-eval-style documents (task, asserts, code);
  3. the "train" split of the generated MBPP-format tasks (disjoint asserts from the "test" split).
A byte-level BPE tokenizer is trained on that corpus; each size is a random-init ReLU `LlamaForCausalLM` trained with
AdamW and a warmup + cosine schedule on packed sequences.  Same recipe and corpus -> bitwise the same weights
(fixed seeds, deterministic data order, `torch.use_deterministic_algorithms`, a fixed thread count).

Checkpoints live in `<cache_dir>/micro/<preset>-<key>/<size>/`, the key hashing the recipe (minus the size list) and
the corpus digest; each size directory is written atomically and reused when present.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from sparsealign.config import config_hash
from sparsealign.data.mbpp.generated import generated_split
from sparsealign.data.mbpp.prompts import lm_eval_query
from sparsealign.data.records import MbppTask, mbpp_split_of
from sparsealign.io import atomic_dir, atomic_write_json
from sparsealign.lifetime import child_pool
from sparsealign.models.micro import PretrainRecipe, SizeSpec, non_embedding_params
from sparsealign.models.tiny import build_llama, train_tokenizer
from sparsealign.sandbox.pool import SandboxPool
from sparsealign.settings import cache_dir, resolve_data_path

Log = Callable[[str], None]
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


# ---------------------------------------------------------------- corpus
def task_prompt(task: MbppTask) -> str:
    """The zero-shot lm-evaluation-harness MBPP query; the family is pretrained on `query + code + [DONE]`."""

    return lm_eval_query(task)


def task_document(task: MbppTask) -> str:
    code = task.code.replace("\r\n", "\n").replace("\t", "    ").strip()
    return f"{task_prompt(task)}{code}\n[DONE]"


def stdlib_documents(budget_bytes: int, root: str | Path | None = None) -> list[str]:
    """Stdlib `*.py` sources in a fixed pseudo-random order (hash of the relative path) until the byte budget."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]  # prune: never walk site-packages
        files += [Path(dirpath) / f for f in filenames if f.endswith(".py")]
    files.sort(key=lambda p: hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest())
    docs, used = [], 0
    for path in files:
        size = path.stat().st_size
        if used + size > budget_bytes:
            continue  # skip big files rather than stop, so the budget is filled
        docs.append(path.read_bytes().decode("utf-8", errors="replace"))
        used += size
    return docs


def mbpp_documents(splits: list[str], path: str | Path = "mbpp/mbpp.jsonl") -> list[str]:
    """MBPP tasks of the given splits (by task id, so the test split can never leak in) as documents."""
    assert "test" not in splits, "the MBPP test split is evaluation data"
    docs = []
    with open(resolve_data_path(path), encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if mbpp_split_of(int(row["task_id"])) in splits:
                docs.append(task_document(MbppTask(task_id=row["task_id"], text=row["text"], code=row["code"],
                                                   test_list=row["test_list"])))
    return docs


def build_corpus(recipe: PretrainRecipe) -> tuple[list[str], dict[str, int]]:
    """All documents in training order, and the per-source byte counts (for the model card)."""
    parts = {
        "stdlib": stdlib_documents(recipe.stdlib_bytes),
        "mbpp": mbpp_documents(recipe.mbpp_splits),
        "generated": [task_document(t) for t in generated_split("train", recipe.generated_train_tasks)],
    }
    docs = [d for group in parts.values() for d in group]
    return docs, {k: sum(len(d) for d in v) for k, v in parts.items()} | {"documents": len(docs)}


def corpus_digest(docs: list[str]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8", errors="replace") + b"\0")
    return h.hexdigest()


def family_key(recipe: PretrainRecipe, digest: str) -> str:
    """Cache key: the recipe without its size list (sizes are subdirectories) plus the corpus digest."""
    base = recipe.model_dump(exclude={"sizes"})
    return hashlib.sha256(f"{config_hash(base)}:{digest}".encode()).hexdigest()[:12]


# ---------------------------------------------------------------- training
@contextlib.contextmanager
def deterministic(num_threads: int) -> Iterator[None]:
    import torch

    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def pack(token_ids: list[list[int]], eos_id: int, seq_len: int):
    """Concatenate documents (each followed by EOS) and cut into `[n, seq_len]` rows; the ragged tail is dropped."""
    import torch

    flat = [t for ids in token_ids for t in (*ids, eos_id)]
    n = len(flat) // seq_len
    return torch.tensor(flat[: n * seq_len], dtype=torch.long).view(n, seq_len)


def lr_at(step: int, recipe: PretrainRecipe) -> float:
    """Linear warmup then cosine decay from lr to lr * min_lr_ratio (multiplier of the base lr)."""
    import math

    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def param_counts(model) -> tuple[int, int]:
    """(total, non-embedding) parameters; with tied embeddings the matrix counts once."""
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def train_size(spec: SizeSpec, recipe: PretrainRecipe, tok, train_rows, heldout_rows, log: Log) -> tuple:
    """Train one size; returns (model, metrics). Batches walk a seeded permutation of rows, epoch after epoch."""
    import torch


    model = build_llama(len(tok), hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
                        intermediate_size=spec.intermediate_size, hidden_act="relu",
                        max_position_embeddings=recipe.max_position_embeddings, seed=recipe.seed,
                        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, recipe))
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    order, cursor, losses = torch.randperm(len(train_rows), generator=gen), 0, []
    start = time.perf_counter()
    model.train()
    for step in range(recipe.steps):
        if cursor + recipe.batch_size > len(order):
            order, cursor = torch.randperm(len(train_rows), generator=gen), 0
        batch = train_rows[order[cursor: cursor + recipe.batch_size]]  # [B, T]
        cursor += recipe.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        losses.append(loss.item())
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % max(1, recipe.steps // 5) == 0:
            log(f"{spec.name}: step {step + 1}/{recipe.steps} loss {losses[-1]:.3f}")
    wall = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        held = [float(model(input_ids=heldout_rows[i: i + 16], labels=heldout_rows[i: i + 16]).loss)
                for i in range(0, len(heldout_rows), 16)]
    total, non_emb = param_counts(model)
    tail = losses[-min(20, len(losses)):]
    return model, {
        "params": total, "non_embedding_params": non_emb, "train_loss_first": losses[0],
        "train_loss_final": sum(tail) / len(tail), "heldout_loss": sum(held) / max(1, len(held)),
        "train_wall_s": round(wall, 2), "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
        "loss_curve": losses[:: max(1, len(losses) // 50)],
    }


def generated_pass_rate(model, tok, n_tasks: int = 26, max_new_tokens: int = 40) -> float:
    """Greedy zero-shot pass@1 on the first `n_tasks` held-out generated tasks (a sanity figure for the card).

    Model output is untrusted code: it runs in the project sandbox (`sparsealign.sandbox.pool`).
    """
    import torch

    tasks = generated_split("test", n_tasks)
    enc = tok([task_prompt(t) for t in tasks], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)

    codes = [tok.decode(row, skip_special_tokens=True).split("[DONE]")[0]
             for row in out[:, enc["input_ids"].shape[1]:]]
    with SandboxPool(workers=1, timeout_s=5.0) as pool:
        passed = sum(r.passed for r in pool.map([t.test_program(c) for t, c in zip(tasks, codes, strict=True)]))
    return passed / len(tasks)


# ---------------------------------------------------------------- family cache
@dataclass
class FamilyMember:
    name: str
    path: str  # a Hugging Face checkpoint directory (model + tokenizer)
    params: int
    non_embedding_params: int
    metrics: dict  # pretrain.json contents (losses, wall time, generated pass@1, ...)
    cached: bool


@dataclass
class Family:
    preset: str
    root: str
    key: str
    members: list[FamilyMember]

    def to_dict(self) -> dict:
        return asdict(self)


def _load_tokenizer_or_train(root: Path, docs: list[str], recipe: PretrainRecipe):
    from transformers import AutoTokenizer


    tok_dir = root / "tokenizer"
    if not tok_dir.exists():
        tok = train_tokenizer(docs, vocab_size=recipe.vocab_size)
        with atomic_dir(tok_dir) as tmp:
            tok.save_pretrained(tmp)
    return AutoTokenizer.from_pretrained(tok_dir)


def _done(size_dir: Path, spec: SizeSpec, key: str) -> dict | None:
    """The finished checkpoint's metadata if it was made by this recipe + corpus (key) and size, else None."""
    meta = size_dir / "pretrain.json"
    if not meta.exists():
        return None
    info = json.loads(meta.read_text())
    return info if info.get("size") == spec.model_dump() and info.get("key") == key else None


def _train_and_save(recipe: PretrainRecipe, spec: SizeSpec, root: Path, key: str, corpus_stats: dict, tok, rows,
                    eval_generated: bool, log: Log) -> dict:
    """Train one size and write its checkpoint directory atomically; returns its pretrain.json contents."""
    with deterministic(recipe.num_threads):
        model, metrics = train_size(spec, recipe, tok, *rows, log)
        if eval_generated:
            metrics["generated_pass@1"] = generated_pass_rate(model, tok)
    info = {"size": spec.model_dump(), "preset": recipe.preset, "key": key, "seed": recipe.seed,
            "corpus": corpus_stats, "vocab_size": len(tok), **metrics}
    with atomic_dir(root / spec.name) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "pretrain.json", info)
    log(f"{spec.name}: {metrics['non_embedding_params']:,} non-embedding params, loss "
        f"{metrics['train_loss_final']:.3f} (held-out {metrics['heldout_loss']:.3f}), "
        f"{metrics['train_wall_s']:.1f}s -> {root / spec.name}")
    return info


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _worker(recipe_dict: dict, size_name: str, root: str, key: str, eval_generated: bool) -> dict:
    """Entry point of a training process: rebuilds the (deterministic) corpus and trains one size."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    recipe = PretrainRecipe(**recipe_dict)
    docs, stats = build_corpus(recipe)
    if family_key(recipe, corpus_digest(docs)) != key:
        raise RuntimeError("corpus changed while pretraining (another process edited the data?)")
    tok = AutoTokenizer.from_pretrained(Path(root) / "tokenizer")
    spec = next(s for s in recipe.sizes if s.name == size_name)
    return _train_and_save(recipe, spec, Path(root), key, stats, tok, _rows(docs, tok, recipe), eval_generated,
                           _stderr)


def ensure_family(recipe: PretrainRecipe, *, root: str | Path | None = None, force: bool = False,
                  eval_generated: bool = True, workers: int | None = None, log: Log | None = None) -> Family:
    """Pretrain every size of `recipe` that is not cached yet (or all with `force`) and describe the family.

    `root` defaults to `<cache_dir>/micro/<preset>-<key>`; each `<root>/<size>/` is a HF checkpoint directory with
    `pretrain.json` (recipe, corpus stats, parameter counts, losses, wall time).  `workers` > 1 trains sizes in
    parallel processes (largest first), each on `recipe.num_threads` threads: the weights are the same as with one
    worker, the wall time on 2 idle cores is about that of the largest size.  Default: min(2, CPU count).
    """
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    log = log or _stderr
    t0 = time.perf_counter()
    docs, corpus_stats = build_corpus(recipe)
    digest = corpus_digest(docs)
    key = family_key(recipe, digest)
    root = Path(root) if root else cache_dir() / "micro" / f"{recipe.preset}-{key}"
    old = root / "recipe.json"
    if old.exists() and json.loads(old.read_text()).get("key") != key:
        shutil.rmtree(root / "tokenizer", ignore_errors=True)  # another recipe/corpus: its tokenizer does not apply
    atomic_write_json(root / "recipe.json", {**recipe.model_dump(), "key": key, "corpus_sha256": digest,
                                             "corpus": corpus_stats})
    infos = {} if force else {s.name: _done(root / s.name, s, key) for s in recipe.sizes}
    cached = {name for name, info in infos.items() if info is not None}
    todo = sorted((s for s in recipe.sizes if s.name not in cached), key=lambda s: -non_embedding_params(s))
    if todo:
        tok = _load_tokenizer_or_train(root, docs, recipe)
        if workers > 1 and len(todo) > 1:
            with child_pool(min(workers, len(todo))) as pool:
                futures = {s.name: pool.submit(_worker, recipe.model_dump(), s.name, str(root), key, eval_generated)
                           for s in todo}
                infos.update({name: f.result() for name, f in futures.items()})
        else:
            with deterministic(recipe.num_threads):
                rows = _rows(docs, tok, recipe)
            for spec in todo:
                infos[spec.name] = _train_and_save(recipe, spec, root, key, corpus_stats, tok, rows, eval_generated,
                                                   log)
    members = [FamilyMember(s.name, str(root / s.name), infos[s.name]["params"],
                            infos[s.name]["non_embedding_params"], infos[s.name], s.name in cached)
               for s in recipe.sizes]
    log(f"family {recipe.preset}-{key} ready in {time.perf_counter() - t0:.1f}s")
    return Family(recipe.preset, str(root), key, members)


def _rows(docs: list[str], tok, recipe: PretrainRecipe):
    """Tokenize and pack the corpus; a seeded permutation splits rows into train and held-out."""
    import torch

    ids = tok(docs, add_special_tokens=False)["input_ids"]
    rows = pack(ids, tok.eos_token_id, recipe.seq_len)
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(recipe.seed))
    n_held = max(1, int(len(rows) * recipe.held_out_fraction))
    return rows[perm[n_held:]], rows[perm[:n_held]]
