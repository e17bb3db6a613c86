"""A real OpenAI-compatible `/v1/chat/completions` server on 127.0.0.1 for the rationale and judge tests.

Replies are computed from the request (never constant):
  * a judge prompt (system mentions "impartial judge") gets the verdict for the LONGER answer ("[[C]]" when equal),
    except for questions containing POSITION_BIASED, which always get "[[A]]" (a position-biased judge), and
    questions containing RAMBLING, which get no verdict at all (a small judge that ignores the format).
    With `logprobs: true` the reply is the verdict letter and the first token's `top_logprobs` give
    P(A) = len(A) / (len(A) + len(B)) (RAMBLING: no letter among them); with a json_schema `response_format` the
    reply is {"verdict": ...};
  * any other prompt (a rationale prompt) gets a sentence naming the length and the first words of the response the
    prompt says is preferred, so a test can check the server was told the right one.
`fail_plan` makes the first requests fail with the given HTTP statuses (429 carries `Retry-After: 0`);
`fail_after=N` answers 503 to everything after N successful completions (a server that goes down mid-run).
"""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POSITION_BIASED = "[position-biased]"
RAMBLING = "[rambling]"
_SECTION = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)
_RESPONSE = re.compile(r"\[Response ([AB])\]\n(.*?)(?=\n\n\[Response [AB]\]\n|\Z)", re.S)


def judge_reply(user: str) -> str:
    answers = dict(_SECTION.findall(user))
    question = user.split("[The Start of Assistant A's Answer]")[0]
    if POSITION_BIASED in question:
        return "Assistant A answers first, so I prefer it. [[A]]"
    if RAMBLING in question:
        return "Both assistants say things. Assistant A says one thing and assistant B another."
    a, b = len(answers["A"]), len(answers["B"])
    verdict = "A" if a > b else "B" if b > a else "C"
    return f"I answer [[C]] only for equal answers. A has {a} characters and B has {b}.\n[[{verdict}]]"


def judge_logprobs(user: str) -> tuple[str, list[dict]]:
    """(reply token, top_logprobs of the first token): P(A) proportional to A's length."""
    answers = dict(_SECTION.findall(user))
    if RAMBLING in user.split("[The Start of Assistant A's Answer]")[0]:
        return "Both", [{"token": "Both", "logprob": -0.2}, {"token": "The", "logprob": -1.9}]
    a, b = len(answers["A"]) + 1, len(answers["B"]) + 1
    pa, pb = 0.9 * a / (a + b), 0.9 * b / (a + b)  # 0.1 left for other tokens
    top = sorted([{"token": "A", "logprob": math.log(pa)}, {"token": " B", "logprob": math.log(pb)},
                  {"token": "The", "logprob": math.log(0.1)}], key=lambda t: -t["logprob"])
    return top[0]["token"], top


def rationale_reply(user: str) -> str:
    preferred = re.search(r"judged Response ([AB]) to be better", user).group(1)
    responses = {k: v.strip() for k, v in _RESPONSE.findall(user)}
    text = responses[preferred]
    return f"Rationale: the preferred response ({len(text)} chars) begins {' '.join(text.split()[:4])!r}."


class FakeOpenAI:
    def __init__(self, *, api_key: str | None = None, fail_plan: list[int] | None = None,
                 fail_after: int | None = None):
        self.api_key = api_key
        self.fail_after = fail_after
        self.fail_plan = list(fail_plan or [])
        self.bodies: list[dict] = []  # successful completions, in arrival order
        self.attempts = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):  # noqa: N802 -- http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.attempts += 1
                    fail = server.fail_plan.pop(0) if server.fail_plan else None
                    if server.fail_after is not None and len(server.bodies) >= server.fail_after:
                        fail = 503
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided"}})
                if fail is not None:
                    extra = {"Retry-After": "0"} if fail == 429 else {}
                    return self._send(fail, {"error": {"message": f"injected {fail}"}}, extra)
                system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
                content = judge_reply(user) if "impartial judge" in system else rationale_reply(user)
                choice: dict = {"index": 0, "finish_reason": "stop"}
                if body.get("logprobs"):
                    content, top = judge_logprobs(user)
                    top = top[: int(body.get("top_logprobs") or 1)]
                    choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
                elif (body.get("response_format") or {}).get("type") == "json_schema":
                    verdicts = re.findall(r"\[\[([ABC])\]\]", content)
                    content = json.dumps({"verdict": verdicts[-1]} if verdicts else {"answer": content})
                choice["message"] = {"role": "assistant", "content": content}
                with server.lock:
                    server.bodies.append(body)
                self._send(200, {
                    "id": f"cmpl-{len(server.bodies)}", "object": "chat.completion", "model": body["model"],
                    "choices": [choice],
                    "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(content.split())},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
