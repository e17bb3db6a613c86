"""The sparsity choice of an evaluation or generation (`--sparsity DIR --mode M --prefill P`), and the identity of
the model an artifacts folder was calibrated on.

    spec = SparsitySpec(artifacts="runs/x/sparsity", mode=DYNAMIC)   # a mode of sparse.modes
    handle = apply_spec(model, spec)          # (sparse.apply) refuses artifacts calibrated on another model

`sparsify calibrate` writes `model_identity(model)` into sparsity.json's model_info (with target and sites), so the
folder says what it is for; `apply_spec` compares that hash with the model it is applied to.  The hash covers the
architecture fields of the config and a strided sample of every weight tensor (rounded to bfloat16, so a float32
and a bfloat16 load of the same checkpoint agree), not the whole weights: cheap on a 70B model, and any fine-tune
changes the sampled values.
"""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import Field

from sparsealign.config import StrictModel
from sparsealign.errors import UserError
from sparsealign.sparse.config import Prefill
from sparsealign.sparse.modes import DYNAMIC, Mode, mode_help, usable_modes

# config fields that fix the architecture (paths, versions, dtype and attention backend do not)
ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings", "rope_theta",
             "tie_word_embeddings", "head_dim")
SAMPLES_PER_TENSOR = 256


class SparsitySpec(StrictModel):
    """Run the model under calibrated activation sparsity (None in a runner config = dense)."""

    artifacts: str = Field(description="artifacts directory written by `sparsify calibrate`")
    mode: Mode = Field(DYNAMIC, description=mode_help())
    prefill: Prefill = Field("dense", description="prompt positions dense (default) or sparse; decode is sparse")


def model_identity(model) -> dict[str, Any]:
    """{model_hash, config_sha256, weights_sha256} of a loaded HF model (before sparsity is applied)."""
    import json

    import torch

    cfg = model.config.to_dict()
    arch = {k: cfg[k] for k in ARCH_KEYS if k in cfg}
    config_sha = hashlib.sha256(json.dumps(arch, sort_keys=True, default=str).encode()).hexdigest()
    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            flat = tensor.detach().reshape(-1)
            h.update(f"{name}:{tuple(tensor.shape)}".encode())
            if flat.numel() == 0 or not flat.is_floating_point() or flat.device.type == "meta":
                continue
            step = max(1, flat.numel() // SAMPLES_PER_TENSOR)
            sample = flat[::step][:SAMPLES_PER_TENSOR].to(device="cpu", dtype=torch.bfloat16)
            h.update(sample.view(torch.int16).numpy().tobytes())
    weights_sha = h.hexdigest()
    model_hash = hashlib.sha256(f"{config_sha}:{weights_sha}".encode()).hexdigest()
    return {"model_hash": model_hash, "config_sha256": config_sha, "weights_sha256": weights_sha}


def describe_artifacts(art, model, source: str) -> dict[str, Any]:
    """model_info for a freshly calibrated artifacts object: what model, target and sites it is for."""
    modes = usable_modes(art.predictors is not None)
    return {**model_identity(model), "model_source": source, "target_sparsity": art.config.target_sparsity,
            "sites": list(art.layer_names), "site": "act(gate_proj(x))", "modes": modes}


def check_artifacts_model(art, model, where: str) -> None:
    """One-line refusal when `art` was calibrated on a different model (old artifacts without a hash pass)."""
    want = (art.model_info or {}).get("model_hash")
    if not want:
        return
    got = model_identity(model)
    if got["model_hash"] == want:
        return
    what = "architecture" if got["config_sha256"] != art.model_info.get("config_sha256") else "weights"
    source = art.model_info.get("model_source", "another model")
    raise UserError(f"{where}: these sparsity artifacts were calibrated on a different model ({source}, hash "
                    f"{want[:12]}; this model's {what} differ, hash {got['model_hash'][:12]})",
                    hint="calibrate on this model: sparsealign sparsify calibrate --model MODEL --out DIR")
