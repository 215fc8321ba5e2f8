"""A small OpenAI-compatible test server (a real HTTP server on loopback, stdlib http.server)
that serves a local model through the ``/v1/completions`` API (echo with logprobs, and greedy
generation) and ``/v1/chat/completions``. It stands in for vLLM or llama.cpp server, which
cannot run here; it computes log-probabilities independently of the client's code path (one
plain forward pass over the whole echoed text), so agreement with the local backend is a real
check. It can also misbehave on purpose: answer 500, stall, or send malformed JSON.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Misbehaviour:
    """What the server does wrong: the first ``fail`` requests get ``status``; every request
    waits ``delay`` seconds; ``malformed`` replies are not JSON; a request whose prompt
    ``admit`` refuses is held, unanswered, until ``release`` is set (a constructed stall: a
    job can be caught with exactly the work before it done)."""

    def __init__(self, fail: int = 0, status: int = 500, delay: float = 0.0, malformed: bool = False,
                 admit=None) -> None:
        self.fail, self.status, self.delay, self.malformed = fail, status, delay, malformed
        self.admit = admit
        self.release = threading.Event()
        self.requests = 0


class FirstQueriesOnly:
    """Admits prompts about the first ``n`` distinct queries it meets (of ``texts``) and refuses
    the others: the server then holds their requests, so a job stops with exactly those done."""

    def __init__(self, texts: list[str], n: int) -> None:
        # Longest first, so a query whose text holds another's is found as itself.
        self.texts = sorted(texts, key=len, reverse=True)
        self.n, self.admitted, self.lock = n, set(), threading.Lock()

    def __call__(self, prompt: str) -> bool:
        with self.lock:
            found = [t for t in self.texts if t in prompt]
            if found and (found[0] in self.admitted or len(self.admitted) < self.n):
                self.admitted.add(found[0])
                return True
            return False


def _echo_logprobs(llm, prompt: str) -> tuple[list[str], list[float | None], list[int], str, float]:
    """Tokens of ``prompt`` with their log-probabilities and character offsets, as vLLM echoes
    them, and the greedy next token with its log-probability."""
    import torch

    enc = llm.tokenizer(prompt, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    while len(ids) > 1 and tuple(offsets[-1]) == (0, 0):
        ids.pop()
        offsets.pop()
    with llm._lock, torch.inference_mode():
        logits = llm.model(input_ids=torch.tensor([ids])).logits[0].float()
    table = torch.log_softmax(logits, dim=-1)
    values: list[float | None] = [None] + [float(table[i - 1, ids[i]]) for i in range(1, len(ids))]
    tokens = llm.tokenizer.convert_ids_to_tokens(ids)
    best = int(table[-1].argmax())
    return tokens, values, [int(start) for start, _ in offsets], llm.tokenizer.decode([best]), float(table[-1, best])


def make_handler(llm, misbehaviour: Misbehaviour):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self) -> None:
            misbehaviour.requests += 1
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if misbehaviour.delay:
                time.sleep(misbehaviour.delay)
            if misbehaviour.admit is not None and not misbehaviour.admit(str(request.get("prompt", ""))):
                misbehaviour.release.wait(600)
            if misbehaviour.requests <= misbehaviour.fail:
                return self._send(misbehaviour.status, b'{"error": "injected failure"}')
            if misbehaviour.malformed:
                return self._send(200, b"<html>not json</html>")
            max_tokens = int(request.get("max_tokens", 16))
            if self.path == "/v1/completions":
                prompt = request["prompt"]
                if request.get("echo") and request.get("logprobs") is not None:
                    # The prompt's own tokens, then one generated token (a real server echoes the
                    # prompt's tokenization and appends what it generated).
                    tokens, values, offsets, text, next_value = _echo_logprobs(llm, prompt)
                    text = text if max_tokens else ""
                    if text:
                        tokens, values, offsets = tokens + [text], values + [next_value], offsets + [len(prompt)]
                    choice = {"index": 0, "text": prompt + text, "finish_reason": "length",
                              "logprobs": {"tokens": tokens, "token_logprobs": values, "text_offset": offsets}}
                else:
                    text = llm.generate([prompt], max_new_tokens=max_tokens)[0] if max_tokens else ""
                    choice = {"index": 0, "text": text, "finish_reason": "length"}
                usage = {"prompt_tokens": llm.count_tokens(prompt), "completion_tokens": llm.count_tokens(text)}
                return self._send(200, json.dumps({"object": "text_completion", "choices": [choice],
                                                   "usage": usage}).encode())
            if self.path == "/v1/chat/completions":
                message = request["messages"][-1]["content"]
                text = llm.generate([llm.render(message)], max_new_tokens=max_tokens)[0]
                return self._send(200, json.dumps({"object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}]}).encode())
            return self._send(404, b'{"error": "no such endpoint"}')

    return Handler


class OpenAITestServer:
    """``with OpenAITestServer(llm) as url:`` serves ``llm`` on a free loopback port."""

    def __init__(self, llm, misbehaviour: Misbehaviour | None = None) -> None:
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(llm, self.misbehaviour))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.misbehaviour.release.set()
        self.server.shutdown()
        self.server.server_close()
