"""`AlignTrainer`: a transformers `Trainer` whose loss is a preference loss; everything else (DDP, FSDP, DeepSpeed,
gradient accumulation, mixed precision, checkpoint/resume, `report_to`) is the stock Trainer driven by accelerate.

One forward per step scores chosen, rejected (and rationale) rows together; reference log-probs come precomputed in
the batch, so only the policy is in memory.  `reference_pass` reuses the Trainer's distributed prediction loop to
score the reference once before training.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from sparsealign.align.logps import score_features, sequence_logps
from sparsealign.align.losses import LossParams, loss_for, preference_loss

log = logging.getLogger("sparsealign.align")


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


class AlignTrainer(Trainer):
    # compute_loss returns a per-batch mean: the Trainer divides it by the gradient-accumulation steps
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, loss_params: LossParams, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_params = loss_params
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._reference_pass = False
        self._tokens = 0
        self._last_log = time.perf_counter()
        self._window_loss: list[torch.Tensor] = []  # per-batch training losses since the last logging step

    def running(self) -> dict[str, str]:
        """Loss and reward accuracy over the training batches since the last logging step (the progress bar)."""
        acc = self._metrics["train"].get("rewards/accuracies") or []
        out = {"loss": torch.stack(self._window_loss).float().mean().item()} if self._window_loss else {}
        if acc:
            out["acc"] = sum(acc) / len(acc)
        return {k: f"{v:.4f}" for k, v in out.items()}

    # -- loss --------------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n_seq = 3 if loss_for(self.loss_params.method).uses_rationale else 2
        logp, n = sequence_logps(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        chunks = list(zip(logp.chunk(n_seq), n.chunk(n_seq), strict=True))  # each ([B], [B])
        (logp_w, n_w), (logp_l, n_l) = chunks[0], chunks[1]
        logp_r, n_r = chunks[2] if n_seq == 3 else (None, None)
        out = preference_loss(
            self.loss_params, logp_w, n_w, logp_l, n_l,
            ref_logp_w=inputs.get("ref_chosen_logps"), ref_logp_l=inputs.get("ref_rejected_logps"),
            logp_r=logp_r, n_r=n_r,
        )
        loss = out["loss"].mean()
        self._record(out, logp_w, logp_l, inputs)
        if model.training:
            self._window_loss.append(loss.detach())
        return (loss, out) if return_outputs else loss

    def _record(self, out: dict[str, torch.Tensor], logp_w: torch.Tensor, logp_l: torch.Tensor, inputs) -> None:
        """Keep per-example values (gathered over processes) so logged means weight every pair equally."""
        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        rc, rr = gather(out["rewards_chosen"].detach()), gather(out["rewards_rejected"].detach())
        values = {
            "rewards/chosen": rc, "rewards/rejected": rr, "rewards/margins": rc - rr,
            "rewards/accuracies": (rc > rr).float() + 0.5 * (rc == rr).float(),  # ties (e.g. DPO at step 0) count half
            "logps/chosen": gather(logp_w.detach()), "logps/rejected": gather(logp_l.detach()),
        }
        for key in ("rationale_nll", "sft_nll", "odds_ratio_loss"):
            if key in out:
                values[key] = gather(out[key].detach())
        for key, val in values.items():
            self._metrics[mode][key].extend(val.float().cpu().tolist())
        if mode == "train":
            self._tokens += int(gather(inputs["attention_mask"].sum().reshape(1)).sum().item())

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._eval_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        prefix = getattr(self, "_eval_prefix", "eval")
        mode = "eval" if f"{prefix}_loss" in logs else "train"
        metrics = {k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"{prefix}_{k}": v for k, v in metrics.items()}
        elif "loss" in logs:  # a training log step: throughput since the previous one
            now = time.perf_counter()
            metrics["tokens_per_s"] = self._tokens / max(now - self._last_log, 1e-9)
            self._tokens, self._last_log = 0, now
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()
        if mode == "train":
            self._window_loss.clear()

    # -- evaluation and the reference pass ------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            if self._reference_pass:
                logp, _ = sequence_logps(model, inputs["input_ids"], inputs["attention_mask"],
                                         inputs["completion_mask"])
                return None, torch.stack(logp.chunk(2), dim=1), None  # [B, 2]: chosen, rejected
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def reference_pass(self, features: list[dict[str, Any]], packed: bool = False) -> torch.Tensor:
        """Log-probs of chosen/rejected under the current (initial) model, [N, 2] in dataset order, on every process.

        `packed` (single process): pairs packed (the prompt runs once for both responses) and batched longest first,
        as evaluation scores them (1.7x faster than the loader on SmolLM2 in bf16) -- for training pairs, whose
        reference log-probs only enter the loss; held-out pairs keep the loader's batches, so at the start policy
        and reference give bit-identical log-probs there (every reward exactly 0).  DDP: the unwrapped model scores
        an accelerate-sharded loader (as TRL's precompute does);
        wrapping it here would keep the Trainer from wrapping it for training.  FSDP/DeepSpeed shard the weights, so
        there the Trainer's own prediction loop runs the pass.  Rationale rows are not part of it (the reference
        scores only chosen and rejected), so they are dropped from the features first.
        """
        features = [{k: v for k, v in f.items() if not k.startswith("rationale_")} for f in features]
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            self._reference_pass = True
            try:
                out = self.predict(ListDataset(features), metric_key_prefix="ref")
            finally:
                self._reference_pass = False
            return torch.as_tensor(out.predictions, dtype=torch.float32)
        if packed and self.accelerator.num_processes == 1:
            was_training = self.model.training
            self.model.eval()
            try:
                with self.accelerator.autocast():
                    scores = score_features(self.model, features, self.data_collator.pad_id,
                                            max(8, self.args.per_device_eval_batch_size))
            finally:
                self.model.train(was_training)
            return torch.stack([scores["chosen_logps"], scores["rejected_logps"]], dim=1).float()
        loader = torch.utils.data.DataLoader(ListDataset(features), batch_size=self.args.per_device_eval_batch_size,
                                             collate_fn=self.data_collator, shuffle=False)
        loader = self.accelerator.prepare(loader)
        was_training, chunks = self.model.training, []
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            for batch in loader:
                logp, _ = sequence_logps(self.model, batch["input_ids"], batch["attention_mask"],
                                         batch["completion_mask"])
                chunks.append(self.accelerator.gather_for_metrics(torch.stack(logp.chunk(2), dim=1)).cpu())
        self.model.train(was_training)
        return torch.cat(chunks).float()


PROGRESS_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "rationale_nll", "eval_loss",
                 "eval_rewards/accuracies", "tokens_per_s")


class LedgerCallback(TrainerCallback):
    """Every Trainer log (train steps and evaluations) becomes a ledger event of the align cell (and a run-log line)."""

    def __init__(self, ledger: Any, cell: str):
        self.ledger, self.cell = ledger, cell

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            clean = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            self.ledger.log_event("align", self.cell, clean, step=state.global_step)
            if shown := progress_line(clean):
                log.info("align %s step %d: %s", self.cell, state.global_step, shown)


def progress_line(logs: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k in PROGRESS_KEYS and isinstance(v, (int, float)))


class ProgressCallback(TrainerCallback):
    """Progress on stderr (stdout belongs to `--json`), from rank 0 only.  With `bar` and a terminal: a bar with ETA
    whose postfix is the running loss and reward accuracy (means over the pairs since the last logging step);
    otherwise one plain line per logging step, which log files and the study's parallel cells keep."""

    def __init__(self, cell: str, running: Any, *, bar: bool = False, stream: Any = None):
        self.cell, self.running, self.want_bar, self.stream = cell, running, bar, stream or sys.stderr
        self.bar: Any = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.want_bar and state.is_world_process_zero and self.stream.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=f"align {self.cell}",
                            unit="step", file=self.stream, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(self.running(), refresh=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not (shown := progress_line(logs or {})):
            return
        line = f"align {self.cell} step {state.global_step}/{state.max_steps}: {shown}"
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
