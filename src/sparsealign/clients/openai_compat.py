"""A client for any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, llama.cpp, TGI, ...).

HTTP, retries (408/409/429/5xx, timeouts, connection errors; exponential backoff with jitter from 0.5 s to 8 s,
the server's `Retry-After` honoured up to 60 s) are the `openai` SDK's.  What this layer adds:
  * the persistent SQLite cache (`cache.py`): the server's JSON is stored as received, so an interrupted job resumes
    without paying twice;
  * bounded concurrency: `complete_many` runs requests on a thread pool of `concurrency` workers;
  * request counts (every HTTP attempt is counted by an httpx event hook, so retries are visible);
  * one-line `UserError`s (missing key, unreachable server, 4xx) that never contain the API key.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsealign.clients.cache import ResponseCache, cache_key
from sparsealign.errors import UserError

Message = dict[str, str]
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
    sent: int = 0  # completions asked of the server (first attempts)
    cache_hits: int = 0
    completions: int = 0

    @property
    def retries(self) -> int:
        return self.requests - self.sent


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
    ):
        if not base_url.startswith(("http://", "https://")):
            raise UserError(f"--base-url {base_url!r} is not an http(s) URL",
                            hint="pass e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1")
        import openai  # imported here: the CLI's start-up stays light

        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self._key = read_api_key(api_key_env)
        self.api_key_env = api_key_env
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.cache = ResponseCache(cache_path) if cache_path else None
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()
        http = openai.DefaultHttpxClient(event_hooks={"request": [lambda _request: self._count(requests=1)]})
        # no key (`--api-key-env none`): the SDK insists on one, so it gets a placeholder whose header each request
        # omits
        self._no_auth = {} if self._key else {"extra_headers": {"Authorization": openai.Omit()}}
        self._sdk = openai.OpenAI(base_url=self.base_url, api_key=self._key or NO_KEY, max_retries=self.max_retries,
                                  timeout=timeout_s, http_client=http)

    # ---- one request -------------------------------------------------------------------------------------
    def complete(self, messages: list[Message], **params: Any) -> Completion:
        key = cache_key(self.base_url, self.model, messages, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            self._count(cache_hits=1, completions=1)
            return _completion(hit, cached=True)
        body = {"model": self.model, "messages": messages, **params}
        response = self._post(messages, params)
        if self.cache is not None:
            self.cache.put(key, body, response)
        self._count(completions=1)
        return _completion(response, cached=False)

    def _post(self, messages: list[Message], params: dict[str, Any]) -> dict[str, Any]:
        import openai

        self._count(sent=1)
        attempts = f"after {self.max_retries + 1} attempts"
        try:  # every parameter goes in the body as given (vLLM & co. take fields the SDK does not name)
            raw = self._sdk.chat.completions.with_raw_response.create(model=self.model, messages=messages,
                                                                      extra_body=params or None, **self._no_auth)
            return self._parse(raw.http_response.content)
        except openai.APIStatusError as exc:
            detail = self._scrub(_error_detail(exc))
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:  # the SDK's retries ran out
                raise EndpointError(f"POST {self.url} failed {attempts}: HTTP {exc.status_code}: {detail}",
                                    hint="check that the server is up; raise --max-retries for a flaky endpoint",
                                    ) from None
            raise EndpointError(f"POST {self.url} returned HTTP {exc.status_code}: {detail}",
                                hint=_hint_for_status(exc.status_code, self.api_key_env)) from None
        except openai.APIConnectionError as exc:  # timeouts included
            cause = exc.__cause__ or exc
            raise EndpointError(f"POST {self.url} failed {attempts}: {self._scrub(f'{exc} ({cause})')}",
                                hint="check --base-url and that the server is up; raise --max-retries for a "
                                     "flaky endpoint") from None

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
        self._sdk.close()
        if self.cache is not None:
            self.cache.close()


def _completion(response: dict[str, Any], *, cached: bool) -> Completion:
    choice = response["choices"][0]
    content = (choice.get("logprobs") or {}).get("content") or []
    top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
    return Completion(text=choice["message"]["content"] or "", cached=cached,
                      finish_reason=choice.get("finish_reason"), usage=response.get("usage") or {},
                      top_logprobs=top)


def _error_detail(exc: Any) -> str:
    """The server's error message (`{"error": {"message": ...}}`), else its body."""
    body = exc.body
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        err = err.get("message", err)
    return str(err if err is not None else exc.response.text[:2000])


def _hint_for_status(code: int, env_name: str) -> str:
    if code in (401, 403):
        return f"check the API key in ${env_name} (or --api-key-env)"
    if code == 404:
        return "check --base-url (it should end in /v1) and --model"
    return "check --model and the generation parameters"
