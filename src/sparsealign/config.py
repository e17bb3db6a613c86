"""Typed configs: pydantic models loaded from YAML, with `--set key=value` overrides.

Validation errors are one line and name the file, the dotted field and, where the field has a closed set of values,
the allowed ones.  Every stage defines its own `StageConfig` subclass; the resolved config is written into the run
directory and hashed, so a changed config is detected instead of being mixed into finished results.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import reprlib
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sparsealign.errors import ConfigError

C = TypeVar("C", bound=BaseModel)
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


MAX_DEPTH = 100
MAX_NODES = 1_000_000  # YAML aliases can make a 1 KB file expand to billions of values ("billion laughs")


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """safe_load (libyaml's parser where installed: ~20x faster on big values), except that a key given twice in
    one mapping is an error (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML reports unhashable keys itself
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {str(key)[:60]!r} appears twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')
_BRACKET = re.compile(r"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _flow_depth(text: str) -> int:
    """Deepest nesting of [ ] / { } outside quoted strings; PyYAML takes quadratic time on deep flow nesting
    (seconds for 2,000 levels) before it fails, so deep text is refused before parsing."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_QUOTED.sub("", text)):
        depth = depth + 1 if match.group() in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest


def _safe_load(text: str, where: str) -> Any:
    """yaml.safe_load with duplicate keys, deep nesting and alias bombs refused (ConfigError naming `where`)."""
    if _flow_depth(text) > MAX_DEPTH:
        raise ConfigError(f"{where}: YAML nested deeper than {MAX_DEPTH} levels", hint="flatten the config")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply", hint="flatten the config") from None
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 in a file name or an argument
        raise ConfigError(f"{where}: not UTF-8 text", hint="write the value in UTF-8") from None
    stack, nodes = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH or nodes > MAX_NODES:
            what = f"nested deeper than {MAX_DEPTH} levels" if depth > MAX_DEPTH else \
                f"expands to more than {MAX_NODES:,} values (YAML aliases?)"
            raise ConfigError(f"{where}: YAML {what}", hint="write the config out plainly")
        if isinstance(node, str) and _SURROGATE.search(node):  # "\ud800" in YAML: no text, fails every encode
            raise ConfigError(f"{where}: a string holds a lone surrogate escape, which is not text",
                              hint="write the value in UTF-8")
        children = [*node.keys(), *node.values()] if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list, str)))
    return data


class StrictModel(BaseModel):
    """Base for every config: unknown fields are errors (a typo must not be silently ignored).

    `set_aliases` maps extra `--set` names to dotted fields of this config (HF/TRL names are in HF_ALIASES)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
    set_aliases: ClassVar[dict[str, str]] = {}


# Hugging Face TrainingArguments / TRL / PEFT names accepted by `--set`, mapped to ours where the config has them.
HF_ALIASES = {
    "learning_rate": "lr", "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "grad_accum",
    "num_train_epochs": "epochs", "lr_scheduler_type": "lr_scheduler", "warmup_ratio": "warmup",
    "warmup_steps": "warmup", "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules", "simpo_gamma_ratio": "gamma_beta_ratio",
}


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else annotation
    return annotation


def _has_path(model: type[BaseModel], dotted: str) -> bool:
    current: Any = model
    for part in dotted.split("."):
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return False
        current = _unwrap(current.model_fields[part].annotation)
    return True


def aliases_under(prefix: str, model: type[BaseModel], names: Iterable[str] = ()) -> dict[str, str]:
    """`set_aliases` of a config that holds `model` at the dotted `prefix`: `--set NAME=...` for each of `names`
    (fields of `model`) and for each HF/TRL alias of a field `model` has (HF_ALIASES), forwarded to `prefix.<field>`."""
    table = {**{n: n for n in names}, **HF_ALIASES}
    return {k: f"{prefix}.{v}" for k, v in table.items() if _has_path(model, v)}


def resolve_key(model: type[BaseModel], key: str) -> str:
    """`--set` key -> our dotted field: itself if it exists, else the config's own alias, else an HF/TRL alias."""
    if _has_path(model, key):
        return key
    own = getattr(model, "set_aliases", {})
    if key in own:
        return own[key]
    target = HF_ALIASES.get(key)
    return target if target is not None and _has_path(model, target) else key


def _alias_overrides(model: type[BaseModel], pairs: Iterable[str]) -> list[str]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        out.append(f"{resolve_key(model, key.strip())}{sep}{value}" if sep else pair)
    return out


def parse_overrides(pairs: Iterable[str], *, source: str = "--set") -> dict[str, Any]:
    """`["a.b=1", "c=[x, y]"]` -> nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{source} {pair!r}: expected key=value", hint="write e.g. --set seed=1 (sections: "
                              "--set lora.r=8)")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"{source} {pair!r}: empty key", hint="write e.g. --set seed=1")
        try:
            value = _safe_load(raw, f"{source} {key}") if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)  # YAML 1.1 reads `1e-5` as a string
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is True:  # `lora=true` then `lora.r=16`: the switched-on section gets a field
                node[part] = {}
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source} {pair!r}: {part} is set both as a value and as a section")
        if value is True and isinstance(node.get(parts[-1]), dict):
            continue  # `lora.r=16` then `lora=true`: the section is on already, keep its fields
        node[parts[-1]] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        elif value is True and isinstance(merged.get(key), dict):
            continue  # `lora: {r: 8}` in the file, `--set lora=true`: a section switched on keeps its fields
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found", hint="pass an existing YAML file")
    if path.is_dir() or path.is_char_device() or path.is_block_device() or path.is_socket():  # /dev/zero never ends
        raise ConfigError(f"{path}: not a regular file", hint="pass a YAML file")
    try:
        data = _safe_load(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{line}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of fields, got {type(data).__name__}")
    return data


def _allowed_values(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Walk the model's annotations along `loc` to find a Literal/Enum and return its values (or field names)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return sorted(current.model_fields)
            current = field.annotation
            while typing.get_origin(current) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
                args = [a for a in typing.get_args(current) if a is not type(None)]
                current = args[0] if args else current
                if not args:
                    break
            while typing.get_origin(current) in (list, tuple, set, dict):
                args = typing.get_args(current)
                current = args[-1] if args else current
        else:
            return None
    if typing.get_origin(current) is typing.Literal:
        return [repr(v) for v in typing.get_args(current)]
    import enum

    if isinstance(current, type) and issubclass(current, enum.Enum):
        return [repr(m.value) for m in current]
    return None


_REPR = reprlib.Repr()  # bounded even for huge or deep values
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxlevel = 80, 80, 6, 3


def _short_repr(value: Any, width: int = 80) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    err = exc.errors()[0]
    loc = tuple(err.get("loc", ()))
    field = ".".join(str(p) for p in loc) or "(top level)"
    msg = err.get("msg", "invalid value")
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    if err.get("type") == "extra_forbidden":
        return f"{source}: unknown field '{field}'{_did_you_mean(model, loc)}{more}"
    if err.get("type") == "missing" and len(loc) == 1:
        missing = [str(e["loc"][0]) for e in exc.errors() if e.get("type") == "missing" and len(e["loc"]) == 1]
        flags = ", ".join(f"--{m.replace('_', '-')}" for m in missing)
        rest = len(exc.errors()) - len(missing)
        return (f"{source}: missing {flags} (required; pass {flags} or set {', '.join(missing)} in --config)"
                + (f" (+{rest} more)" if rest else ""))
    allowed = _allowed_values(model, loc)
    got = err.get("input")
    got_s = f" (got {_short_repr(got)})" if got is not None and not isinstance(got, dict) else ""
    hint = f"; allowed values: {', '.join(allowed)}" if allowed and "Input should be" not in msg else ""
    return f"{source}: field '{field}': {msg}{got_s}{hint}{more}"


def _did_you_mean(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """"; did you mean 'lr'?" from the fields at that level (and HF/TRL aliases), else a short field list."""
    allowed = _allowed_values(model, loc) or []
    name = str(loc[-1]) if loc else ""
    names = {a: a for a in allowed}
    if len(loc) == 1:  # top level: HF names and the config's own aliases are accepted too
        names.update({k: f"{v} (alias {k})" for k, v in HF_ALIASES.items() if _has_path(model, v)})
        names.update({k: f"{v} (alias {k})" for k, v in getattr(model, "set_aliases", {}).items()})
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(f"'{names[c]}'" for c in dict.fromkeys(close)) + "?"
    if not allowed:
        return ""
    shown = ", ".join(allowed[:10]) + (f", ... ({len(allowed)} fields)" if len(allowed) > 10 else "")
    return f"; no close match (fields here: {shown})"


def build_config(model: type[C], data: dict[str, Any], *, source: str) -> C:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_config(
    model: type[C],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: dict[str, Any] | None = None,
) -> C:
    """Defaults <- `base` (e.g. CLI flags) <- YAML file <- `--set` overrides, validated once."""
    data: dict[str, Any] = dict(base or {})
    source = "defaults"
    if path is not None:
        data = deep_merge(data, read_yaml(path))
        source = str(path)
    overrides = _alias_overrides(model, overrides)
    if overrides:
        data = deep_merge(data, parse_overrides(overrides))
        source = f"{source} + --set" if path is not None else "--set"
    return build_config(model, data, source=source)


def config_hash(config: BaseModel | dict[str, Any]) -> str:
    """Stable short hash of a config (sorted JSON of its resolved values)."""
    payload = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def diff_configs(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (for the 'config changed' message)."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for key in keys:
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(diff_configs(a, b, prefix=f"{name}."))
        elif a != b:
            out.append(name)
    return out
