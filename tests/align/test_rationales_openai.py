"""Rationales through a real OpenAI-compatible HTTP server on 127.0.0.1: retries, cache, resume, key hygiene."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from llm_server import FakeOpenAI
from sparsealign.align.rationales import chosen_shown_first, rationale_messages
from sparsealign.clients import ChatClient, EndpointError
from sparsealign.data.preference import load_pairs

HH = "hh-rlhf/helpful-base/test.jsonl.gz"
SECRET = "sk-test-7f3a9c1e5b"


def _args(server: FakeOpenAI, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["rationales", "generate", "--data", HH, "--out", str(out), "--source", "openai", "--model", "fake-judge",
            "--base-url", server.url, "--api-key-env", "SA_TEST_KEY", "--cache", str(cache), "--concurrency", "3",
            "--json", *extra]


def _expected(pair) -> str:
    return f"the preferred response ({len(pair.chosen.strip())} chars) begins {' '.join(pair.chosen.split()[:4])!r}."


def test_generate_openai_retries_cache_and_resume(cli, tmp_path: Path):
    out, cache = tmp_path / "rationales.jsonl", tmp_path / "cache.sqlite"
    env = {"SA_TEST_KEY": SECRET}
    with FakeOpenAI(api_key=SECRET, fail_plan=[429, 500, 503]) as server:
        first = cli(*_args(server, out, cache, "--limit", "3"), env=env)
        assert first.returncode == 0, first.stderr
        s1 = first.json()
        assert (s1["generated"], s1["with_rationale"], s1["reused"]) == (3, 3, 0)
        assert s1["retries"] == 3 and s1["requests"] == 6 and len(server.bodies) == 3

        # resume: a larger run keeps the 3 finished rationales and asks only for the 3 new pairs
        second = cli(*_args(server, out, cache, "--limit", "6"), env=env)
        assert second.returncode == 0, second.stderr
        s2 = second.json()
        assert (s2["reused"], s2["generated"], s2["with_rationale"], s2["requests"]) == (3, 3, 6, 3)
        assert len(server.bodies) == 6

        # a fresh output file is served entirely from the cache: no request reaches the server
        out2 = tmp_path / "again.jsonl"
        third = cli(*_args(server, out2, cache, "--limit", "6"), env=env)
        assert third.returncode == 0, third.stderr
        assert third.json()["cache_hits"] == 6 and third.json()["requests"] == 0
        assert server.attempts == 9

    pairs = load_pairs(out).pairs
    assert len(pairs) == 6 and out.read_text() == out2.read_text()
    for pair in pairs:  # the server computed each rationale from the response the prompt marked as preferred
        assert pair.rationale == _expected(pair), pair.rationale
        assert pair.meta["rationale_source"] == "openai:fake-judge"
    # the prompt shows the question and both responses, in a per-pair order; the key never leaves the environment
    users = [body["messages"][-1]["content"] for body in server.bodies]
    for pair in pairs:
        assert sum(pair.prompt.strip() in u and pair.chosen.strip() in u and pair.rejected.strip() in u
                   for u in users) == 1
    orders = {chosen_shown_first(p.id) for p in pairs}
    assert orders == {True, False}, "6 pairs should include both orders"
    for path in (out, out2, cache, *tmp_path.glob("cache.sqlite*")):
        assert SECRET.encode() not in path.read_bytes()
    for res in (first, second, third):
        assert SECRET not in res.stdout + res.stderr


def test_server_dying_midway_keeps_finished_rationales(cli, tmp_path: Path):
    out = tmp_path / "partial.jsonl"
    env = {"SA_TEST_KEY": SECRET}
    with FakeOpenAI(api_key=SECRET, fail_after=2) as server:
        res = cli(*_args(server, out, tmp_path / "c.sqlite", "--limit", "5", "--concurrency", "1", "--max-retries",
                         "1", "--save-every", "1"), env=env)
    assert_one_line_error(res, "HTTP 503", "after 2 attempts")
    kept = load_pairs(out).pairs
    assert len(kept) == 5 and sum(p.rationale is not None for p in kept) == 2
    with FakeOpenAI(api_key=SECRET) as server:
        res = cli(*_args(server, out, tmp_path / "c.sqlite", "--limit", "5"), env=env)
        assert res.returncode == 0, res.stderr
        assert (res.json()["reused"], res.json()["generated"], len(server.bodies)) == (2, 3, 3)
    assert all(p.rationale == _expected(p) for p in load_pairs(out).pairs)


def test_rationale_prompt_shows_both_responses_and_marks_preferred(data_dir: Path):
    for pair in load_pairs(HH, limit=4).pairs:
        user = rationale_messages(pair)[-1]["content"]
        first = chosen_shown_first(pair.id)
        a, b = user.index("[Response A]"), user.index("[Response B]")
        chosen_at, rejected_at = user.index(pair.chosen.strip()), user.index(pair.rejected.strip())
        assert pair.prompt.strip() in user and user.index("[Question]") < a < b
        assert (a < chosen_at < b < rejected_at) if first else (a < rejected_at < b < chosen_at)
        assert f"judged Response {'A' if first else 'B'} to be better" in user


def test_missing_api_key_env_is_one_line_error(cli, tmp_path: Path):
    res = cli("rationales", "generate", "--data", HH, "--out", str(tmp_path / "o.jsonl"), "--source", "openai",
              "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "SA_MISSING_KEY", "--limit", "2",
              env={"SA_MISSING_KEY": ""})
    assert_one_line_error(res, "SA_MISSING_KEY")
    assert not (tmp_path / "o.jsonl").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_base_url_fails_after_retries(cli, tmp_path: Path):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    res = cli("rationales", "generate", "--data", HH, "--out", str(tmp_path / "o.jsonl"), "--source", "openai",
              "--model", "m", "--base-url", url, "--api-key-env", "SA_TEST_KEY", "--limit", "2", "--max-retries", "2",
              "--no-cache", env={"SA_TEST_KEY": SECRET})
    assert_one_line_error(res, url, "after 3 attempts")
    assert SECRET not in res.stderr


def test_client_wrong_key_is_not_retried_and_not_leaked(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("SA_TEST_KEY", SECRET)
    with FakeOpenAI(api_key="sk-other") as server:
        client = ChatClient(server.url, "m", api_key_env="SA_TEST_KEY", max_retries=4)
        with pytest.raises(EndpointError) as err:
            client.complete([{"role": "user", "content": "hi"}])
        assert server.attempts == 1 and "HTTP 401" in str(err.value) and "SA_TEST_KEY" in str(err.value)
        assert SECRET not in str(err.value)


def test_client_many_keeps_order_and_caches(monkeypatch, tmp_path: Path, data_dir: Path):
    monkeypatch.setenv("SA_TEST_KEY", SECRET)
    pairs = load_pairs(HH, limit=5).pairs
    requests = [rationale_messages(p) for p in pairs]
    with FakeOpenAI(api_key=SECRET, fail_plan=[500, 500]) as server:
        client = ChatClient(server.url, "m", api_key_env="SA_TEST_KEY", concurrency=4,
                            cache_path=tmp_path / "c.sqlite")
        done: list[int] = []
        got = client.complete_many(requests, on_done=lambda i, c: done.append(i), max_tokens=64)
        assert [c.text for c in got] == ["Rationale: " + _expected(p) for p in pairs]
        assert sorted(done) == list(range(5)) and client.stats.retries == 2
        # different params are a different cache key; same params are hits
        assert not client.complete(requests[0], max_tokens=65).cached
        assert client.complete(requests[0], max_tokens=64).cached
        assert json.loads(json.dumps(server.bodies[0]))["max_tokens"] == 64


def test_no_key_sends_no_authorization_and_passes_every_parameter():
    """`--api-key-env none` (local servers): the SDK's placeholder key never reaches the server as a header, and
    parameters the SDK does not name (vLLM's top_k) go into the body as given."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str | None, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.headers.get("Authorization"), body))
            raw = json.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ChatClient(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", api_key_env="none")
        assert client.complete([{"role": "user", "content": "x"}], max_tokens=3, top_k=5).text == "ok"
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [(None, {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                            "top_k": 5})]
    assert (client.stats.requests, client.stats.retries) == (1, 0)
