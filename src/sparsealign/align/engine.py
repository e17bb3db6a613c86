"""`run_align`: one alignment cell end to end, the same under plain Python, `accelerate launch` (DDP, FSDP,
DeepSpeed ZeRO-3) and the study.

    pairs -> tokenise (counted truncation) -> reference log-probs (cached; DPO/RDPO only) -> Trainer.train
          -> runs/<name>/align/<cell>/{model/, metrics.json}, per-step metrics in the ledger

Re-running a finished cell returns its ledger metrics; re-running an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsealign.align.config import AlignConfig
from sparsealign.align.inputs import check_rationales, check_report_to, load_align_pairs
from sparsealign.align.logps import PairCollator, TokenizeSettings, encode_pairs
from sparsealign.align.losses import LossParams, loss_for
from sparsealign.align.reference import attach, cached_reference_logps, reference_key
from sparsealign.align.sidecar import write_record
from sparsealign.align.trainer import AlignTrainer, LedgerCallback, ListDataset, ProgressCallback
from sparsealign.config import config_hash
from sparsealign.errors import UserError
from sparsealign.io import atomic_dir, atomic_write_json
from sparsealign.models import loading
from sparsealign.rundir import RunDir

log = logging.getLogger("sparsealign.align")
STAGE = "align"


def tokenize_settings(cfg: AlignConfig):
    return TokenizeSettings(
        max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length,
        max_rationale_tokens=cfg.max_rationale_tokens, rationale_max_length=cfg.rationale_max_length,
        chat_template=cfg.chat_template, randomize_rationale_order=cfg.randomize_rationale_order,
        rationale_seed=cfg.seed,
    )


def use_bf16(cfg: AlignConfig) -> bool:
    import torch

    if cfg.bf16 is not None:
        return cfg.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def apply_lora(cfg: AlignConfig, model):
    from peft import LoraConfig, get_peft_model

    assert cfg.lora is not None
    lora = LoraConfig(task_type="CAUSAL_LM", r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules)
    with warnings.catch_warnings():  # peft reads transformers' deprecated alias; nothing for our users to act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lora)


def has_accelerator() -> bool:
    import torch

    probe = getattr(torch, "accelerator", None)
    return bool(probe.is_available()) if probe is not None else torch.cuda.is_available()


def training_args(cfg: AlignConfig, output_dir: Path, has_eval: bool):
    import dataclasses

    from transformers import TrainingArguments

    # transformers >= 5.x renamed gradient_checkpointing to activation_checkpointing (old name deprecated)
    name = "activation_checkpointing" if any(
        f.name == "activation_checkpointing" for f in dataclasses.fields(TrainingArguments)) else "gradient_checkpointing"
    checkpointing = {name: True, f"{name}_kwargs": {"use_reentrant": False}} if cfg.gradient_checkpointing else {}

    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps, warmup_steps=cfg.warmup, lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, bf16=use_bf16(cfg),
        **checkpointing,
        logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if has_eval and cfg.eval_steps else "no", eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit,
        report_to=cfg.report_to or "none", seed=cfg.seed, data_seed=cfg.seed,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        # without a GPU, processes started by `accelerate launch`/torchrun join a gloo (CPU) process group
        use_cpu=not has_accelerator(), dataloader_pin_memory=has_accelerator(),
    )


def _train(cfg: AlignConfig, run: RunDir, pairs: list[Any] | None, eval_pairs: list[Any] | None,
           callbacks: Sequence[Any], args: Any = None, bar: bool = False,
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch
    from transformers import PrinterCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    cell = cfg.cell_name
    if pairs is None:
        pairs, eval_pairs = load_align_pairs(cfg)
    eval_pairs = eval_pairs or []
    if not pairs:
        raise UserError(f"{cfg.data}: no preference pairs to train on", hint="check --data / data_split / max_pairs")
    check_rationales(cfg, pairs, cfg.data)
    check_rationales(cfg, eval_pairs, cfg.eval_data or "eval pairs")
    check_report_to(cfg)

    set_seed(cfg.seed)
    model, tok = loading.load_model_and_tokenizer(cfg.model, device=None, dtype=cfg.dtype)  # the trainer places it
    settings = tokenize_settings(cfg)
    loss = loss_for(cfg.method)
    beta = loss.resolve_beta(cfg.beta)
    rationale = loss.uses_rationale
    train_feats, n_trunc = encode_pairs(tok, pairs, settings, rationale=rationale)
    eval_feats, n_trunc_eval = encode_pairs(tok, eval_pairs, settings, rationale=rationale)
    log.info("align %s: %d train pairs (%d truncated), %d eval pairs (%d truncated)", cell, len(pairs), n_trunc,
             len(eval_pairs), n_trunc_eval)
    if cfg.lora is not None:
        model = apply_lora(cfg, model)

    out_dir = run.root / STAGE / cell
    args = args or training_args(cfg, out_dir / "checkpoints", bool(eval_feats))
    trainer = AlignTrainer(
        model=model, args=args, data_collator=PairCollator(tok.pad_token_id), processing_class=tok,
        loss_params=LossParams(cfg.method, beta=beta, lam=cfg.lam,
                               gamma_beta_ratio=cfg.gamma_beta_ratio, rationale_weight=cfg.rationale_weight,
                               rationale_norm=cfg.rationale_norm),
        callbacks=[LedgerCallback(run.ledger, cell), *callbacks],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ProgressCallback(cell, trainer.running, bar=bar))
    metrics: dict[str, Any] = {"method": cfg.method, "beta": beta, "n_train_pairs": len(pairs),
                               "n_eval_pairs": len(eval_pairs), "n_truncated": n_trunc,
                               "n_truncated_eval": n_trunc_eval, "ref_cache_hits": 0,
                               "world_size": trainer.accelerator.num_processes}
    if loss.needs_reference:
        train_feats, eval_feats = _with_reference(cfg, trainer, train_feats, eval_feats, metrics)
    trainer.train_dataset = ListDataset(train_feats)
    eval_ds = ListDataset(eval_feats) if eval_feats else None
    trainer.eval_dataset = eval_ds

    resume = get_last_checkpoint(str(args.output_dir)) if Path(args.output_dir).is_dir() else None
    if eval_ds is not None and resume is None:
        metrics.update(trainer.evaluate(eval_ds, metric_key_prefix="eval_start"))
    elif eval_ds is not None:  # resumed: the starting evaluation was logged by the first attempt
        for event in run.ledger.events(STAGE, cell):
            metrics.update({k: v for k, v in event.items() if k.startswith("eval_start_")})
    result = trainer.train(resume_from_checkpoint=resume)
    metrics.update({k: v for k, v in result.metrics.items() if isinstance(v, (int, float))})
    metrics["resumed_from"] = Path(resume).name if resume else None
    if eval_ds is not None:
        metrics.update(trainer.evaluate(eval_ds, metric_key_prefix="eval"))

    model_dir = _save_model(cfg, trainer, tok, out_dir)
    if trainer.is_world_process_zero():
        metrics = {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics, {"model": model_dir, "metrics": out_dir / "metrics.json"}


def _with_reference(cfg: AlignConfig, trainer: Any, train_feats: list, eval_feats: list, metrics: dict):
    """Attach cached/computed reference log-probs; a separate `ref_model` is loaded only for its pass."""
    ref_name = cfg.ref_model or cfg.model
    extra = {"dtype": cfg.dtype, "bf16": use_bf16(cfg)}
    scorer = trainer
    if cfg.ref_model and cfg.ref_model != cfg.model:
        ref_model, _ = loading.load_model_and_tokenizer(cfg.ref_model, device=None, dtype=cfg.dtype)
        scorer = AlignTrainer(model=ref_model, args=trainer.args, data_collator=trainer.data_collator,
                              loss_params=trainer.loss_params)
    out = []
    for feats, packed in ((train_feats, True), (eval_feats, False)):
        if not feats:
            out.append(feats)
            continue
        logps, hit = cached_reference_logps(scorer, feats, reference_key(ref_name, feats, {**extra, "packed": packed}),
                                            packed=packed)
        metrics["ref_cache_hits"] += int(hit)
        out.append(attach(feats, logps))
    if scorer is not trainer:
        del scorer
        import gc

        gc.collect()
    return out[0], out[1]


def _save_model(cfg: AlignConfig, trainer: Any, tok: Any, out_dir: Path) -> Path:
    """Aligned model as safetensors + tokenizer in <cell>/model, swapped in whole; LoRA adapters are merged unless
    the weights are sharded (FSDP/ZeRO-3: the adapter is written).  Every rank joins the Trainer's state-dict
    gather; only rank 0 writes."""
    final = out_dir / "model"
    main = trainer.is_world_process_zero()
    merge = cfg.lora is not None and not (trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled)

    def write(path: Path) -> None:
        if merge:
            if main:
                trainer.accelerator.unwrap_model(trainer.model).merge_and_unload().save_pretrained(path)
        else:
            trainer.save_model(str(path))
        if main:
            tok.save_pretrained(path)
            write_record(path, cfg)  # method, β, γ, reference: what its evaluators need

    if main:
        with atomic_dir(final) as tmp:
            write(tmp)
    else:
        write(out_dir / ".model.unused")  # collective only: non-zero ranks write nothing
    trainer.accelerator.wait_for_everyone()
    return final


def run_align(cfg: AlignConfig, run: RunDir, *, pairs: list[Any] | None = None,
              eval_pairs: list[Any] | None = None, callbacks: Sequence[Any] = (),
              bar: bool = False) -> dict[str, Any]:
    """Align one cell and return its final metrics (a finished cell with the same config is skipped).

    `pairs`/`eval_pairs` override `cfg.data`/`cfg.eval_data` (already-loaded `PreferencePair`s); `callbacks` are extra
    `TrainerCallback`s; `bar` draws a progress bar when stderr is a terminal (the `align` verb; a study's parallel
    cells print one line per logging step instead).  Under `accelerate launch` every process calls this; only rank 0
    reads and writes the ledger and files (other ranks may pass a RunDir with an in-memory ledger) and tells the
    others whether to train.
    """
    chash, cell = config_hash(cfg), cfg.cell_name
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        row, _ = run.ledger.run_cell(STAGE, cell, chash,
                                     lambda: _train(cfg, run, pairs, eval_pairs, callbacks, bar=bar))
        return row.metrics

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    if pairs is None:
        pairs, eval_pairs = load_align_pairs(cfg)
    # creating the TrainingArguments sets up the process group (gloo without GPUs) that the Trainer then uses
    args = training_args(cfg, run.root / STAGE / cell / "checkpoints", bool(eval_pairs))
    state = PartialState()
    row = run.ledger.get(STAGE, cell) if state.is_main_process else None
    decision = [row.metrics if row is not None and row.status == "done" and row.config_hash == chash else None]
    broadcast_object_list(decision, from_process=0)
    if decision[0] is not None:
        return decision[0]
    if not state.is_main_process:
        return _train(cfg, run, pairs, eval_pairs, callbacks, args, bar)[0]
    row, _ = run.ledger.run_cell(STAGE, cell, chash, lambda: _train(cfg, run, pairs, eval_pairs, callbacks, args, bar))
    return row.metrics
