"""Fuzz inputs: seeds sliced from the real shared files, and hypothesis strategies that break them at every layer.

A `Case` is a small file tree (files, symlinks, folders, devices) plus the entry path a command is given.  It is built
in layers, each drawn by hypothesis so failures shrink to a minimal input:
  records (wrong types at any path, missing/extra fields, huge values, deep nesting, duplicate keys, NaN/Infinity,
  non-objects, degenerate pairs) -> container text (JSONL/JSON/CSV/Parquet/YAML) -> bytes (flips, cuts, inserts,
  encodings, CRLF) -> compression (.gz/.bz2/.xz, unsupported .zst, truncated or corrupt streams, multi-member gzip)
  -> file system (symlinks, dangling or looping links, folders, mixed folders, empty files, devices).
"""

from __future__ import annotations

import bz2
import copy
import functools
import gzip
import io
import json
import lzma
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st

from sparsealign.settings import data_dir

REPO = Path(__file__).resolve().parents[2]
_DEEP = "\x00DEEP:"  # sentinels replaced in the serialised text (no Python object can be nested 200,000 deep)
_DUP = "\x00DUP:"


@dataclass
class Case:
    entry: str  # path (relative to the case root) given to the command
    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # link -> target (may dangle or loop)
    dirs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was done to the seed, for the failure report

    def names(self) -> set[str]:
        """Names an error about this input may use: the entry and every file or folder in the tree."""
        parts = {self.entry, *self.files, *self.links, *self.dirs}
        return {p for path in parts for p in (path, Path(path).name, Path(path).parts[0])}

    def write(self, root: Path) -> Path:
        for rel in self.dirs:
            (root / rel).mkdir(parents=True, exist_ok=True)
        for rel, blob in self.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(blob)
        for rel, target in self.links.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, root / rel)
        return root / self.entry


# -- seeds: small slices of the real files -------------------------------------------------------------------------
def _jsonl_head(rel: str, n: int) -> list[dict[str, Any]]:
    path = data_dir() / rel
    opener = gzip.open if rel.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


@functools.cache
def seeds(kind: str) -> list[dict[str, Any]]:
    """Records of one input kind, taken from (or built from) the real shared files."""
    if kind == "hh-rlhf":
        return _jsonl_head("hh-rlhf/helpful-base/test.jsonl.gz", 3)
    if kind == "mbpp":
        return _jsonl_head("mbpp/mbpp.jsonl", 3)
    if kind == "mbpp-sanitized":
        return json.loads((data_dir() / "mbpp" / "sanitized-mbpp.json").read_text(encoding="utf-8"))[:3]
    if kind == "openai-preference":
        return _jsonl_head("orca_dpo_pairs/validation.jsonl", 2)
    if kind == "orca-intel":
        return [{"system": r["input"]["messages"][0]["content"], "question": r["input"]["messages"][1]["content"],
                 "chosen": r["preferred_output"][0]["content"], "rejected": r["non_preferred_output"][0]["content"]}
                for r in seeds("openai-preference")]
    uf = [{**r, "chosen": r["chosen"][:400], "rejected": r["rejected"][:400]}  # shortened: faster, same shape
          for r in _jsonl_head("ultrafeedback_binarized/train_clean.jsonl", 3)]
    if kind == "ultrafeedback":
        return uf
    if kind == "generic":
        return [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                 "score_chosen": r["metadata"]["score_chosen"], "rationale": "it answers the question"} for r in uf]
    user = [[{"role": "user", "content": r["prompt"]}] for r in uf]
    if kind == "trl-explicit":
        return [{"prompt": u, "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for u, r in zip(user, uf, strict=True)]
    if kind == "trl-implicit":
        return [{"chosen": u + [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": u + [{"role": "assistant", "content": r["rejected"]}]} for u, r in zip(user, uf, strict=True)]
    if kind == "trl-implicit-standard":
        return [{"chosen": f"{r['prompt']} {r['chosen']}", "rejected": f"{r['prompt']} {r['rejected']}"} for r in uf]
    if kind == "samples":  # {id, prompt, response}: the files `eval winrate --candidate/--baseline` reads
        return [{"id": str(i), "prompt": r["prompt"], "response": r["chosen"]} for i, r in enumerate(uf)]
    raise KeyError(kind)


@functools.cache
def config_seeds() -> dict[str, Any]:
    """The packaged study configs, parsed."""
    return {p.name: yaml.safe_load(p.read_text(encoding="utf-8"))
            for p in sorted((REPO / "src/sparsealign/configs").glob("*.yaml"))}


# -- records -------------------------------------------------------------------------------------------------------
# the characters that break readers (quotes, escapes, NUL, line separators, a lone surrogate, non-BMP); a fixed
# alphabet also spares hypothesis building its full Unicode table (~15 s per process)
CHARS = st.sampled_from(list('ab Z0"\\\'{}[],:\n\r\t\x00\x1f\x7f') + ["é", "\u2028", "\ufeff", "\ud800", "😀", "\u0301"])
TEXT = st.text(alphabet=CHARS, max_size=20)
WEIRD = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    TEXT, st.sampled_from(["", " ", "\n\nAssistant:", "\x00", "\ud800x", "é" * 3, "NaN"]),
    st.lists(TEXT, max_size=3),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", ""]),
                                    "content": st.one_of(TEXT, st.none(), st.integers())}),
             max_size=3),
    st.dictionaries(TEXT, TEXT, max_size=3),
)


def _paths(obj: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    out = [prefix] if prefix else []
    if depth < 4:
        items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
        for key, value in items:
            out += _paths(value, (*prefix, key), depth + 1)
    return out


def _set(obj: Any, path: tuple, value: Any, *, drop: bool = False) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if drop:
        if path[-1] in (obj if isinstance(obj, dict) else range(len(obj))):
            del obj[path[-1]]
    else:
        obj[path[-1]] = value


@st.composite
def records(draw: st.DrawFn, kind: str | list[Any]) -> list[Any]:
    """The seed records of `kind` (or the records given) with 0-3 structural mutations."""
    recs: list[Any] = copy.deepcopy(seeds(kind) if isinstance(kind, str) else kind)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["set", "set", "drop", "extra", "deep", "huge", "dup", "nonobject", "delrecord",
                                   "duprecord", "same", "nanscore", "empty"]))
        if op == "empty":
            recs = []
        objs = [i for i, r in enumerate(recs) if isinstance(r, dict)]
        if not objs:
            break
        i = draw(st.sampled_from(objs))
        paths = _paths(recs[i]) or [("chosen",)]
        path = draw(st.sampled_from(paths))
        if op == "set":
            _set(recs[i], path, draw(WEIRD))
        elif op == "drop":
            _set(recs[i], path, None, drop=True)
        elif op == "extra":
            recs[i][draw(TEXT)] = draw(WEIRD)
        elif op == "deep":
            _set(recs[i], path, f"{_DEEP}{draw(st.sampled_from([3, 99, 101, 1000, 200_000]))}")
        elif op == "huge":
            _set(recs[i], path, "x" * draw(st.sampled_from([10_000, 200_000, 1_500_000])))
        elif op == "dup" and isinstance(recs[i], dict) and recs[i]:
            key = draw(st.sampled_from(sorted(recs[i])))
            recs[i] = {f"{_DUP}{key}": draw(WEIRD), **recs[i]}
        elif op == "nonobject":
            recs[i] = draw(st.one_of(st.integers(), TEXT, st.lists(st.integers(), max_size=2),
                                     st.none()))
        elif op == "delrecord":
            del recs[i]
        elif op == "duprecord":
            recs.insert(i, copy.deepcopy(recs[i]))
        elif op == "same" and "chosen" in recs[i]:
            recs[i]["rejected"] = copy.deepcopy(recs[i]["chosen"])
        elif op == "nanscore":
            recs[i]["score_chosen"] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308]))
    return recs


_DEEP_RE = re.compile(r'"\\u0000DEEP:(\d+)"|"\\0DEEP:(\d+)"|\x00DEEP:(\d+)')  # as JSON, YAML and CSV write it
_DUP_RE = re.compile(r'\\u0000DUP:|"\\0DUP:([^"]*)"')


def _fix_sentinels(text: str) -> str:
    """Turn sentinels into text no Python object could produce: 200,000-deep arrays, keys given twice."""
    text = _DEEP_RE.sub(lambda m: "[" * int(next(g for g in m.groups() if g)) + "]" * int(
        next(g for g in m.groups() if g)), text)
    return _DUP_RE.sub(lambda m: m.group(1) or "", text)


def serialise(recs: list[Any], container: str) -> bytes:
    if container == "jsonl":
        return "".join(_fix_sentinels(json.dumps(r)) + "\n" for r in recs).encode("utf-8", "surrogatepass")
    if container == "json":
        return _fix_sentinels(json.dumps(recs, indent=1)).encode("utf-8", "surrogatepass")
    if container == "yaml":
        doc = recs[0] if len(recs) == 1 else recs
        try:  # libyaml's emitter is fast, but cannot write a lone surrogate; PyYAML's escapes it
            text = yaml.dump(doc, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), allow_unicode=True,
                             width=10**9)
        except UnicodeEncodeError:
            text = yaml.safe_dump(doc, allow_unicode=True, width=10**9)
        return _fix_sentinels(text).encode("utf-8", "surrogatepass")
    dicts = [r if isinstance(r, dict) else {"value": r} for r in recs]
    cols = list(dict.fromkeys(k for r in dicts for k in r))
    cell = lambda v: "" if v is None else v if isinstance(v, str) else json.dumps(v)  # noqa: E731
    if container == "csv":
        import csv

        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow([c.replace(_DUP, "") for c in cols])
        for r in dicts:
            writer.writerow([cell(r.get(c)) for c in cols])
        return _fix_sentinels(buf.getvalue()).encode("utf-8", "surrogatepass")
    import pyarrow as pa
    import pyarrow.parquet as pq

    def clean(text: str) -> str:  # Parquet strings are UTF-8: a lone surrogate cannot be stored
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")

    buf = io.BytesIO()
    try:
        pq.write_table(pa.Table.from_pylist(dicts), buf)
    except (pa.ArrowException, ValueError, TypeError, OverflowError):  # mixed types (a Parquet column has one
        buf = io.BytesIO()  # type), empty structs: the values as text
        pq.write_table(pa.Table.from_pylist([{clean(c): clean(cell(r.get(c))) for c in cols} for r in dicts]), buf)
    return buf.getvalue()


# -- bytes, compression, files -------------------------------------------------------------------------------------
@st.composite
def byte_mutations(draw: st.DrawFn, blob: bytes) -> bytes:
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["flip", "cut", "delete", "insert", "encoding", "crlf", "bom"]))
        pos = int(draw(st.floats(0, 1)) * len(blob)) if blob else 0
        if op == "flip" and blob:
            pos = min(pos, len(blob) - 1)
            blob = blob[:pos] + bytes([blob[pos] ^ draw(st.integers(1, 255))]) + blob[pos + 1:]
        elif op == "cut":
            blob = blob[:pos]
        elif op == "delete":
            blob = blob[:pos] + blob[pos + draw(st.integers(1, 64)):]
        elif op == "insert":
            blob = blob[:pos] + draw(st.sampled_from([b"\n", b"\x00", b"\xff\xfe", b"{", b"]", b'"', b",",
                                                      b"\r", b"\n\n\n", b"NaN"])) + blob[pos:]
        elif op in ("encoding", "crlf", "bom"):
            try:
                text = blob.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if op == "crlf":
                blob = text.replace("\n", "\r\n").encode()
            elif op == "bom":
                blob = b"\xef\xbb\xbf" + blob
            else:
                blob = text.encode(draw(st.sampled_from(["utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"])),
                                   "replace")
    return blob


_COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zst": gzip.compress}


@st.composite
def compressed(draw: st.DrawFn, blob: bytes, choices: tuple[str, ...]) -> tuple[bytes, str]:
    """(bytes, suffix): optionally compressed, the stream then maybe cut or damaged."""
    kind = draw(st.sampled_from(choices))
    if not kind:
        return blob, ""
    if kind == "gz" and draw(st.booleans()):  # multi-member gzip (what `cat a.gz b.gz` gives): valid
        cut = len(blob) // 2
        out = gzip.compress(blob[:cut]) + gzip.compress(blob[cut:])
    else:
        out = _COMPRESS[kind](blob)
    damage = draw(st.sampled_from(["none", "none", "cut", "cut_end", "flip", "trailing"]))
    pos = int(draw(st.floats(0, 1)) * len(out))
    if damage == "cut":
        out = out[:pos]
    elif damage == "cut_end":  # lose only the end marker / trailer
        out = out[: max(0, len(out) - draw(st.integers(1, 12)))]
    elif damage == "flip" and out:
        pos = min(pos, len(out) - 1)
        out = out[:pos] + bytes([out[pos] ^ 0x55]) + out[pos + 1:]
    elif damage == "trailing":
        out = out + draw(st.sampled_from([b"\x00" * 8, b"garbage", b"\x1f"]))
    return out, f".{kind}"


@st.composite
def placed(draw: st.DrawFn, blob: bytes, name: str, modes: tuple[str, ...]) -> Case:
    """Put the file on disk: plainly, behind a (dangling, looping) symlink, in a (mixed) folder, or not at all."""
    mode = draw(st.sampled_from(modes))
    case = Case(entry=name, notes=[f"placed:{mode}"])
    if mode == "plain":
        case.files[name] = blob
    elif mode == "odd_suffix":  # unknown suffix: the reader sniffs the first byte
        case.entry = name.split(".")[0] + draw(st.sampled_from([".txt", "", ".data", ".JSONL"]))
        case.files[case.entry] = blob
    elif mode == "symlink":
        case.files[name], case.links["link-" + name], case.entry = blob, name, "link-" + name
    elif mode == "dangling":
        case.links[name] = "missing-" + name
    elif mode == "loop":
        case.links[name], case.links["other-" + name] = "other-" + name, name
    elif mode == "folder":
        case.files[f"ds/{draw(st.sampled_from(['train', 'test', 'data/train-00000-of-00001', 'x']))}-{name}"] = blob
        case.files["ds/README.md"] = b"# card\n"
        case.entry = "ds"
    elif mode == "mixed_folder":
        case.files[f"ds/train-{name}"], case.files["ds/test.csv"] = blob, b"prompt,chosen,rejected\np,a,b\n"
        case.entry = "ds"
    elif mode == "empty_folder":
        case.dirs.append("ds")
        case.entry = "ds"
    elif mode == "empty":
        case.files[name] = b""
    elif mode == "device":  # never ends (/dev/zero, /dev/urandom) or is empty (/dev/null)
        case.links[name] = draw(st.sampled_from(["/dev/zero", "/dev/urandom", "/dev/null"]))
    return case
