"""A small client for any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, llama.cpp, TGI, ...).

Stdlib only (urllib).  What it adds over a bare POST:
  * bounded concurrency: `complete_many` runs requests on a thread pool of `concurrency` workers;
  * retries on 408/409/429/5xx, timeouts and connection errors, with exponential backoff and jitter, honouring the
    server's `Retry-After`;
  * a persistent SQLite cache (see `cache.py`), so an interrupted job resumes without paying twice;
  * one-line `UserError`s (missing key, unreachable server, 4xx) that never contain the API key.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

from sparsealign.clients.cache import ResponseCache, cache_key
from sparsealign.errors import UserError

Message = dict[str, str]
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
NO_KEY = "none"  # `--api-key-env none`: send no Authorization header (local servers without auth)


class EndpointError(UserError):
    """The endpoint refused or could not be reached (after retries)."""


@dataclass
class Completion:
    text: str
    cached: bool
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    top_logprobs: list[dict[str, Any]] | None = None  # first token's alternatives, when `logprobs` was requested


@dataclass
class ClientStats:
    requests: int = 0  # HTTP attempts sent (retries included)
    retries: int = 0
    cache_hits: int = 0
    completions: int = 0


def read_api_key(env_name: str) -> str | None:
    """The key from `$env_name`; `none` means no key. Missing or empty -> one-line error naming the variable."""
    if env_name.lower() == NO_KEY:
        return None
    if not env_name.isidentifier():
        raise UserError(f"--api-key-env {env_name!r} is not an environment variable name",
                        hint="pass the NAME of the variable that holds the key, e.g. --api-key-env OPENAI_API_KEY")
    key = os.environ.get(env_name, "")
    if not key.strip():
        raise UserError(f"environment variable {env_name} is not set (it should hold the API key)",
                        hint=f"export {env_name}=..., pass --api-key-env NAME, or --api-key-env none for a "
                             "server without authentication")
    return key.strip()


def retry_after_s(value: str | None) -> float | None:
    """Parse a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniform in [0.5, 1] x min(max_s, base_s * 2**attempt)."""
    return min(max_s, base_s * (2**attempt)) * rng.uniform(0.5, 1.0)


class ChatClient:
    """`complete(messages, **params)` and `complete_many(list_of_messages, **params)` against one model."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        cache_path: str | Path | None = None,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        seed: int | None = None,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {base_url!r} is not an http(s) URL",
                            hint="pass e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self._key = read_api_key(api_key_env)
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.timeout_s = timeout_s
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()
        self._rng = random.Random(seed)

    # ---- one request -------------------------------------------------------------------------------------
    def complete(self, messages: list[Message], **params: Any) -> Completion:
        key = cache_key(self.base_url, self.model, messages, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self._count(cache_hits=1, completions=1)
            return _completion(hit, cached=True)
        body = {"model": self.model, "messages": messages, **params}
        response = self._post_with_retries(body)
        if self.cache is not None:
            self.cache.put(key, body, response)
        self._count(completions=1)
        return _completion(response, cached=False)

    def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._count(retries=1)
            self._count(requests=1)
            wait_s: float | None = None
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                return self._parse(raw)
            except urllib.error.HTTPError as exc:
                detail = self._scrub(_error_detail(exc))
                if exc.code not in RETRYABLE_STATUS:
                    raise EndpointError(f"POST {self.url} returned HTTP {exc.code}: {detail}",
                                        hint=_hint_for_status(exc.code, self.api_key_env)) from None
                last = f"HTTP {exc.code}: {detail}"
                wait_s = retry_after_s(exc.headers.get("Retry-After") if exc.headers else None)
            except urllib.error.URLError as exc:
                last = self._scrub(str(exc.reason))
            except TimeoutError:
                last = f"timed out after {self.timeout_s:g}s"
            except (ConnectionError, HTTPException, OSError) as exc:
                last = self._scrub(f"{type(exc).__name__}: {exc}")
            if attempt < self.max_retries:
                if wait_s is None:
                    with self._stats_lock:
                        wait_s = backoff_s(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)
                time.sleep(min(wait_s, 600.0))
        raise EndpointError(
            f"POST {self.url} failed after {self.max_retries + 1} attempts: {last}",
            hint="check --base-url and that the server is up; raise --max-retries for a flaky endpoint",
        )

    def _parse(self, raw: bytes) -> dict[str, Any]:
        try:
            response = json.loads(raw.decode("utf-8"))
            response["choices"][0]["message"]["content"]  # noqa: B018 -- validate the shape once, here
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError):
            snippet = self._scrub(raw[:200].decode("utf-8", "replace"))
            raise EndpointError(f"POST {self.url}: response is not an OpenAI chat completion: {snippet!r}",
                                hint="point --base-url at the /v1 root of an OpenAI-compatible server") from None
        return response

    def _scrub(self, text: str) -> str:
        text = " ".join(text.split())[:300]
        return text.replace(self._key, "***") if self._key else text

    def _count(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)

    # ---- many requests -----------------------------------------------------------------------------------
    def complete_many(
        self,
        requests: Sequence[list[Message]],
        *,
        on_done: Callable[[int, Completion], None] | None = None,
        **params: Any,
    ) -> list[Completion]:
        """Run requests on `concurrency` threads; `on_done(index, completion)` is called (serially) as each ends.

        The first failure cancels what has not started and is re-raised; everything finished so far is already
        in the cache and has been passed to `on_done`, so a re-run resumes from there.
        """
        results: list[Completion | None] = [None] * len(requests)
        done_lock = threading.Lock()

        def one(i: int) -> None:
            completion = self.complete(requests[i], **params)
            with done_lock:
                results[i] = completion
                if on_done is not None:
                    on_done(i, completion)

        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="chat")
        try:
            futures = [pool.submit(one, i) for i in range(len(requests))]
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:  # on a failure or Ctrl-C, drop what has not started; only in-flight requests are awaited
            pool.shutdown(wait=True, cancel_futures=True)
        for fut in futures:
            if not fut.cancelled() and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
        return [r for r in results if r is not None]

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _completion(response: dict[str, Any], *, cached: bool) -> Completion:
    choice = response["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
    return Completion(text=choice["message"]["content"] or "", cached=cached,
                      finish_reason=choice.get("finish_reason"), usage=response.get("usage") or {},
                      top_logprobs=top)


def _error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read()[:2000].decode("utf-8", "replace")
    except OSError:
        return exc.reason or ""
    try:
        err = json.loads(raw).get("error")
        return str(err.get("message") if isinstance(err, dict) else err)
    except (json.JSONDecodeError, AttributeError):
        return raw or str(exc.reason)


def _hint_for_status(code: int, env_name: str) -> str:
    if code in (401, 403):
        return f"check the API key in ${env_name} (or --api-key-env)"
    if code == 404:
        return "check --base-url (it should end in /v1) and --model"
    return "check --model and the generation parameters"
