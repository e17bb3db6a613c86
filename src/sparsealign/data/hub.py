"""Hub dataset ids (`Anthropic/hh-rlhf`) read through `datasets.load_dataset` — but only after a quick check that
they can be read: offline (`HF_HUB_OFFLINE` / `HF_DATASETS_OFFLINE` set, or the hub host not answering within a
second) and not in the local cache, the id fails at once with one line, instead of `datasets` retrying for ~20 s.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from sparsealign.data.readers import Row
from sparsealign.errors import UserError

PROBE_S = 1.0
_TRUE = ("1", "true", "yes", "on")


def offline_reason() -> str | None:
    """Why the hub cannot be reached now (an env flag, or no answer from its host), or None when it answers."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    ok: list[bool] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=PROBE_S).close()
            ok.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(PROBE_S + 0.2)
    return None if ok else f"{host} does not answer"


def _cache_dirs() -> list[Path]:
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or home / "hub"
    return [Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets"), Path(hub)]


def is_cached(hub_id: str) -> bool:
    org, _, name = hub_id.partition("/")
    datasets_cache, hub_cache = _cache_dirs()
    return (datasets_cache / f"{org}___{name}").exists() or (hub_cache / f"datasets--{org}--{name}").exists()


def hub_rows(hub_id: str, split: str | None) -> Iterator[Row]:
    """Rows of a hub dataset, each tagged with its split (`__split__`)."""
    reason = offline_reason()
    if reason is not None:
        if not is_cached(hub_id):
            raise UserError(f"{hub_id}: could not reach Hugging Face hub dataset ({reason}; not in the local cache)",
                            hint="pass a local file (relative names resolve against --data-dir), or load it once "
                                 "online; with the cache filled, HF_HUB_OFFLINE=1 reads it offline")
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"  # read the cache, no retries
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as exc:  # unknown id, no such split, broken cache: the user needs a local file either way
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserError(f"{hub_id}: could not load Hugging Face hub dataset ({first})",
                        hint="pass a local file instead (relative names resolve against --data-dir)") from None
    parts = ds.items() if isinstance(ds, dict) else [(split, ds)]
    index = 0
    for name, part in parts:
        for record in part:
            index += 1
            yield Row(index, None, {**record, "__split__": name} if name else dict(record))
