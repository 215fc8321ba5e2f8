"""An OpenAI-compatible HTTP server (vLLM, llama.cpp server, Ollama, TGI) as an :class:`~rerank.runtimes.llm_base.LLM`.

* ``api="completions"`` (default): ``/v1/completions``. Log-probabilities of given text come
  from ``echo`` with ``logprobs``: the server scores ``prompt + continuation`` and returns each
  token's log-probability and character offset; the continuation's tokens are those ending
  after the prompt. Generation is plain completion at temperature 0.
* ``api="chat"``: ``/v1/chat/completions``, generation only (the chat API gives no
  log-probabilities of given text), for servers that offer nothing else.

Requests run in parallel up to ``concurrency``; each has a ``timeout``, and a timeout, a refused
connection, 429 or 5xx is retried ``retries`` times with exponential ``backoff``. Other errors
and malformed replies raise :class:`~rerank.runtimes.llm_base.LLMError` naming the URL and the reason.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rerank.extras import require
from rerank.runtimes.llm_base import LLMError, LLMUsage, load_tokenizer, render_prompt, truncate_tokens

_RETRIED_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Transient(Exception):
    """A failure worth retrying: a timeout, a failed connection, or a 408/409/425/429/5xx answer."""


class OpenAICompatibleLLM:
    """A served model behind an OpenAI-compatible API.

    ``tokenizer`` (a short name, Hub id or path) lets prompts be rendered with the model's chat
    template and passages truncated by tokens; without one, prompts are plain text and
    truncation assumes about 4 characters per token.
    """

    def __init__(self, base_url: str, *, model: str = "default", api: str = "completions",
                 api_key: str | None = None, timeout: float = 60.0, retries: int = 3, backoff: float = 0.5,
                 concurrency: int = 4, tokenizer: str | None = None, max_context: int = 4096) -> None:
        httpx = require("httpx", "llm", "the OpenAI-compatible LLM backend")
        require("tenacity", "llm", "the OpenAI-compatible LLM backend")

        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        if concurrency < 1 or retries < 0 or timeout <= 0:
            raise ValueError("concurrency >= 1, retries >= 0 and timeout > 0 are required")
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v1") else base + "/v1"
        self.name = f"{model}@{self.base_url}"
        self.model = model
        self.api = api
        self.retries = retries
        self.backoff = backoff
        self.concurrency = concurrency
        self.max_context = max_context
        self.usage = LLMUsage()
        self.retried = 0
        self._usage_lock = threading.Lock()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, headers=headers,
                                    limits=httpx.Limits(max_connections=concurrency))
        self.tokenizer = None if tokenizer is None else load_tokenizer(tokenizer)

    def __repr__(self) -> str:
        return f"OpenAICompatibleLLM({self.base_url!r}, model={self.model!r}, api={self.api!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    # -- text -------------------------------------------------------------------------------
    def render(self, message: str, answer_prefix: str = "") -> str:
        if self.api == "chat":
            return message  # the server applies its own chat template
        return render_prompt(self.tokenizer, message, answer_prefix)

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return max(1, len(text) // 4) if text else 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        if self.tokenizer is None:
            return (text, False) if len(text) <= 4 * max_tokens else (text[: 4 * max_tokens], True)
        return truncate_tokens(self.tokenizer, text, max_tokens)

    # -- transport --------------------------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import httpx  # optional: the 'llm' extra
        from tenacity import (  # optional: the 'llm' extra
            RetryError,
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
        )

        url = f"{self.base_url}{path}"

        def attempt() -> dict[str, Any]:
            try:
                reply = self._client.post(url, json=body)
            except httpx.TimeoutException:
                raise _Transient(f"no reply within {self._client.timeout.read}s") from None
            except httpx.TransportError as exc:
                raise _Transient(f"connection failed ({exc})") from None
            if reply.status_code in _RETRIED_STATUS:
                raise _Transient(f"HTTP {reply.status_code}: {reply.text[:200]}")
            if reply.status_code != 200:
                raise LLMError(f"{url} refused the request: HTTP {reply.status_code}: {reply.text[:300]}")
            try:
                return reply.json()
            except ValueError:
                raise LLMError(f"{url} sent a reply that is not JSON: {reply.text[:200]!r}") from None

        def count(_state) -> None:
            with self._usage_lock:
                self.retried += 1

        retrying = Retrying(stop=stop_after_attempt(self.retries + 1), retry=retry_if_exception_type(_Transient),
                            wait=wait_exponential(multiplier=self.backoff), before_sleep=count)
        try:
            return retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise LLMError(f"{url}: gave up after {self.retries + 1} attempts; last error: {last}") from None

    def _map(self, fn, items: list) -> list:
        if len(items) <= 1 or self.concurrency == 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(fn, items))

    def _count(self, prompt_tokens: int, generated: int = 0) -> None:
        with self._usage_lock:
            self.usage.calls += 1
            self.usage.prompt_tokens += prompt_tokens
            self.usage.forward_tokens += prompt_tokens
            self.usage.generated_tokens += generated

    # -- LLM interface ----------------------------------------------------------------------
    def logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        if self.api == "chat":
            raise LLMError(f"{self.base_url}: the chat API gives no log-probabilities of given text; "
                           "use generation mode or api='completions'")
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        jobs = [(p, c, prompt, cont) for p, (prompt, conts) in enumerate(zip(prompts, continuations))
                for c, cont in enumerate(conts)]
        values = self._map(lambda job: self._score(job[2], job[3]), jobs)
        out = [[0.0] * len(conts) for conts in continuations]
        counted: set[int] = set()
        for (p, c, _, _), (value, prompt_tokens) in zip(jobs, values):
            out[p][c] = value
            if p not in counted:
                counted.add(p)
                self._count(prompt_tokens)
        return out

    def _score(self, prompt: str, continuation: str) -> tuple[float, int]:
        reply = self._post("/completions", {"model": self.model, "prompt": prompt + continuation, "max_tokens": 1,
                                            "temperature": 0, "echo": True, "logprobs": 0})
        try:
            info = reply["choices"][0]["logprobs"]
            offsets, values = list(info["text_offset"]), list(info["token_logprobs"])
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.base_url}/completions: the reply has no echoed token log-probabilities "
                           "(does the server support echo with logprobs?)") from None
        boundary, stop = len(prompt), len(prompt) + len(continuation)
        # Echoed offsets are token starts: the continuation's tokens start at or after the
        # prompt's end; if none does, one token straddles the boundary and is the continuation's.
        chosen = [i for i, start in enumerate(offsets) if boundary <= start < stop]
        if not chosen and continuation:
            chosen = [max(i for i, start in enumerate(offsets) if start < boundary)]
        if any(values[i] is None for i in chosen):
            raise LLMError(f"{self.base_url}/completions: no log-probability for a continuation token")
        prompt_tokens = min(chosen) if chosen else sum(1 for start in offsets if start < boundary)
        return float(sum(values[i] for i in chosen)), prompt_tokens

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        return self._map(lambda prompt: self._generate_one(prompt, max_new_tokens), list(prompts))

    def _generate_one(self, prompt: str, max_new_tokens: int) -> str:
        if self.api == "chat":
            reply = self._post("/chat/completions", {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0,
                                                     "messages": [{"role": "user", "content": prompt}]})
            path = "message.content"
        else:
            reply = self._post("/completions", {"model": self.model, "prompt": prompt, "max_tokens": max_new_tokens,
                                                "temperature": 0})
            path = "text"
        try:
            choice = reply["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
            usage = reply.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.base_url}: the reply has no choices[0].{path}") from None
        if not isinstance(text, str):
            raise LLMError(f"{self.base_url}: choices[0].{path} is not text")
        self._count(int(usage.get("prompt_tokens") or self.count_tokens(prompt)), int(usage.get("completion_tokens") or 0))
        return text
