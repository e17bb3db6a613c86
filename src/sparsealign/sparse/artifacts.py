"""Calibration artifacts (thresholds, predictors, controller settings): safetensors for tensors + JSON for the rest.

Layout of an artifacts directory (by default `<model dir>/sparsity/`):
    sparsity.safetensors   thresholds [L], layer_sparsity [L], scales [L] (the intermediate site),
                           site.<input site>.{thresholds,layer_sparsity,scales} [L] (ffn_input, attn_input, ...),
                           predictor.<l>.fc1.weight ..., cutoffs [L]
    sparsity.json          format version, sites, layer names, sizes, SparsityConfig, calibration metrics, model info
The directory is written atomically as a whole; reloading gives bit-identical tensors, hence identical outputs.
Several targets calibrated from one recording (the study's calibrate cell) live side by side: `target_dir(root, t)`
= `root/t<t:.2f>/`, one artifacts directory each.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparsealign.errors import DataError, UserError
from sparsealign.io import atomic_dir
from sparsealign.sparse.config import SparsityConfig
from sparsealign.sparse.runtime.predictor import LowRankPredictor

FORMAT_VERSION = 2  # 2: input sites (version 1 files load as intermediate-only)
TENSORS, META = "sparsity.safetensors", "sparsity.json"


@dataclass
class SparsityArtifacts:
    layer_names: list[str]  # module paths of the patched MLPs, e.g. model.layers.0.mlp
    hidden_size: int
    intermediate_size: int
    thresholds: list[float]  # static per-layer cut-off on |act(gate x)|
    layer_sparsity: list[float]  # per-layer target (uniform = all equal; greedy = TEAL allocation)
    scales: list[float]  # median |a| per layer (controller floor, plots)
    config: SparsityConfig
    predictors: list[LowRankPredictor] | None = None
    cutoffs: list[float] | None = None  # logit cut-off per predictor (recall-calibrated)
    calibration: dict[str, Any] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)
    # input sites (TEAL): site -> {"thresholds": [L], "layer_sparsity": [L], "scales": [L]} on |input|
    inputs: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def sites(self) -> list[str]:
        """Sites that are actually sparsified (a target above 0 on some layer)."""
        out = ["intermediate"] if any(s > 0 for s in self.layer_sparsity) else []
        return out + [k for k, v in self.inputs.items() if any(s > 0 for s in v["layer_sparsity"])]

    def site(self, name: str) -> dict[str, list[float]]:
        """thresholds / layer_sparsity / scales of one site (zeros = dense for a site not calibrated)."""
        if name == "intermediate":
            return {"thresholds": self.thresholds, "layer_sparsity": self.layer_sparsity, "scales": self.scales}
        zeros = [0.0] * self.num_layers
        return self.inputs.get(name, {"thresholds": zeros, "layer_sparsity": zeros, "scales": [1.0] * self.num_layers})


def save_artifacts(art: SparsityArtifacts, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {
        "thresholds": torch.tensor(art.thresholds, dtype=torch.float64),
        "layer_sparsity": torch.tensor(art.layer_sparsity, dtype=torch.float64),
        "scales": torch.tensor(art.scales, dtype=torch.float64),
    }
    for site, values in art.inputs.items():
        for key, vec in values.items():
            tensors[f"site.{site}.{key}"] = torch.tensor(vec, dtype=torch.float64)
    if art.predictors is not None:
        tensors["cutoffs"] = torch.tensor(art.cutoffs, dtype=torch.float64)
        for i, pred in enumerate(art.predictors):
            for name, value in pred.state_dict().items():
                tensors[f"predictor.{i}.{name}"] = value.detach().contiguous()
    meta = {
        "format_version": FORMAT_VERSION,
        "sites": art.sites,
        "layer_names": art.layer_names,
        "hidden_size": art.hidden_size,
        "intermediate_size": art.intermediate_size,
        "predictor_rank": art.predictors[0].fc1.out_features if art.predictors else None,
        "config": art.config.model_dump(mode="json"),
        "calibration": art.calibration,
        "model_info": art.model_info,
    }
    with atomic_dir(path) as tmp:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return path


def target_dir(root: str | Path, target: float) -> Path:
    """`root/t0.50`: the artifacts directory of one target among several (targets are distinct at 2 decimals)."""
    return Path(root) / f"t{target:.2f}"


def load_artifacts(path: str | Path) -> SparsityArtifacts:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / META).exists() or not (path / TENSORS).exists():
        raise UserError(f"{path}: no sparsity artifacts ({META} + {TENSORS})",
                        hint="run `sparsealign sparsify calibrate` first or pass the artifacts directory")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path / META, f"not valid JSON ({exc})") from None
    if meta.get("format_version") not in (1, FORMAT_VERSION):
        raise DataError(path / META, f"format_version {meta.get('format_version')!r}, expected 1 or {FORMAT_VERSION}")
    t = load_file(str(path / TENSORS))
    inputs: dict[str, dict[str, list[float]]] = {}
    for key, value in t.items():
        if key.startswith("site."):
            _, site, name = key.split(".", 2)
            inputs.setdefault(site, {})[name] = value.tolist()
    predictors = cutoffs = None
    if "cutoffs" in t:
        predictors = []
        for i in range(len(meta["layer_names"])):
            pred = LowRankPredictor(meta["hidden_size"], meta["intermediate_size"], meta["predictor_rank"])
            pred.load_state_dict({k.split(".", 2)[2]: v for k, v in t.items() if k.startswith(f"predictor.{i}.")})
            predictors.append(pred.eval().requires_grad_(False))
        cutoffs = t["cutoffs"].tolist()
    return SparsityArtifacts(
        layer_names=meta["layer_names"], hidden_size=meta["hidden_size"],
        intermediate_size=meta["intermediate_size"], thresholds=t["thresholds"].tolist(),
        layer_sparsity=t["layer_sparsity"].tolist(), scales=t["scales"].tolist(),
        config=SparsityConfig.model_validate(meta["config"]), predictors=predictors, cutoffs=cutoffs,
        calibration=meta.get("calibration", {}), model_info=meta.get("model_info", {}), inputs=inputs,
    )
