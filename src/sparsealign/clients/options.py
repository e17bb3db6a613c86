"""Click options shared by every verb that talks to an OpenAI-compatible endpoint (click + stdlib only at import)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sparsealign.clients.openai_compat import ChatClient
from sparsealign.settings import cache_dir

ENDPOINT_OPTIONS = [
    click.option("--base-url", default="https://api.openai.com/v1", show_default=True,
                 help="OpenAI-compatible API root, ending in /v1 (e.g. http://127.0.0.1:8000/v1 for vLLM)."),
    click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True,
                 help="NAME of the environment variable holding the API key (the key itself is never logged or "
                      "cached); `none` sends no key."),
    click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
                 help="Parallel requests."),
    click.option("--max-retries", default=5, show_default=True, type=click.IntRange(0, 100),
                 help="Retries per request on 408/409/429/5xx, timeouts and connection errors (the openai SDK's: "
                      "backoff from 0.5 s doubling to 8 s with jitter; a Retry-After up to 60 s wins)."),
    click.option("--request-timeout", default=120.0, show_default=True, type=click.FloatRange(0.1),
                 help="Seconds per HTTP request."),
    click.option("--cache", default=None, type=click.Path(dir_okay=False),
                 help="SQLite response cache [default: <cache dir>/chat_responses.sqlite]."),
    click.option("--no-cache", is_flag=True, help="Do not read or write the response cache."),
]


def endpoint_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the endpoint options; the command receives them as keyword arguments for `make_client`."""
    for option in reversed(ENDPOINT_OPTIONS):
        fn = option(fn)
    return fn


def make_client(model: str, *, base_url: str, api_key_env: str, concurrency: int, max_retries: int,
                request_timeout: float, cache: str | None, no_cache: bool):
    """A `ChatClient` from the option values (the default cache lives in the project cache dir)."""
    cache_path = None if no_cache else Path(cache) if cache else cache_dir() / "chat_responses.sqlite"
    return ChatClient(base_url, model, api_key_env=api_key_env, concurrency=concurrency, max_retries=max_retries,
                      timeout_s=request_timeout, cache_path=cache_path)
