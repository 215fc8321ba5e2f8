"""LLM backends for the LLM re-rankers: one small interface, local or served.

An :class:`LLM` does two things:

* ``logprobs(prompts, continuations)``: the log-probability of each given continuation after
  its prompt (PRP scoring mode, query likelihood, yes/no);
* ``generate(prompts, max_new_tokens)``: greedy text (PRP generation mode, listwise).

Both take prompts already rendered by :meth:`LLM.render`, which applies the model's chat template
to a user message and appends the start of the answer. :class:`TransformersLLM` runs a local
Hugging Face model (causal or seq2seq; safetensors, or GGUF dequantized once and cached);
:class:`~rerank.runtimes.openai_http.OpenAICompatibleLLM` talks to any OpenAI-compatible server.
:func:`open_llm` turns a short name, path or URL into either.

Token boundaries: a continuation's tokens are those of ``prompt + continuation`` (tokenized as
one text) that end after the prompt's last character, so a token straddling the boundary counts
as the continuation's. The HTTP backend reads the server's echoed token starts; both backends
score the same tokens whenever the continuation starts a new token, as in every prompt here.
"""
from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rerank.hardware import apply_threads
from rerank.models import gguf_file, resolve
from rerank.precision import calibration_pairs, prepare_model
from rerank.runtimes.llm_base import (
    LLM,
    LLMError,
    LLMUsage,
    _dequantized_gguf,
    load_tokenizer,
    render_prompt,
    truncate_tokens,
)
from rerank.runtimes.openai_http import OpenAICompatibleLLM

LLM_CALIBRATION_PAIRS = 60  # 3 queries x 20 passages: an LLM forward costs more than an encoder's

__all__ = ["LLM", "LLMError", "LLMUsage", "TransformersLLM", "load_tokenizer", "open_llm", "render_prompt",
           "truncate_tokens"]


class TransformersLLM:
    """A local Hugging Face model as an :class:`LLM`.

    ``model`` is a short name from :mod:`rerank.models` (``smollm2-135m``), a Hub id or a local
    folder; a ``.gguf`` file (or a short name that resolves to one) is dequantized once and
    cached under :func:`cache_dir`. Causal and seq2seq (T5-style) models both work.

    ``logprobs`` runs each distinct token sequence once (continuations that differ only in their
    last token share one forward pass) and, with ``prefix_reuse``, runs a prefix shared by a whole
    batch once and re-uses its key/value cache for every member: in pairwise prompting the
    instructions, the query and often the first passage are shared.

    ``precision``: ``auto`` (default; see :mod:`rerank.precision`: the first 60 calibration pairs,
    scored as the log-probability of the query given the passage), ``fp32``, ``bf16`` or
    ``int8``; ``self.choice`` says what runs and why. ``threads``: torch intra-op threads
    (default: the physical cores this process may use).
    """

    def __init__(self, model: str, *, batch_size: int = 8, max_context: int | None = None,
                 prefix_reuse: bool = True, min_shared_prefix: int = 16, threads: int | None = None,
                 device: str = "cpu", precision: str = "auto") -> None:
        import transformers  # deferred: transformers takes long to import
        from transformers import (  # deferred: transformers takes long to import
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForSeq2SeqLM,
            AutoTokenizer,
        )


        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.name = model
        self.batch_size = batch_size
        self.prefix_reuse = prefix_reuse
        self.min_shared_prefix = min_shared_prefix
        self.device = device
        self.usage = LLMUsage()
        self.threads = apply_threads(threads)
        path, gguf = resolve(model), gguf_file(model)
        if gguf is None and str(path).endswith(".gguf"):
            path, gguf = str(Path(path).parent), Path(path).name
        if gguf is not None:
            path = _dequantized_gguf(path, gguf)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            config = AutoConfig.from_pretrained(path)
            self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
            loader = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
            self.model = loader.from_pretrained(path).to(device).eval()  # type: ignore[arg-type]  # transformers types from_pretrained loosely
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as exc:
            raise LLMError(f"cannot load LLM {model!r} ({path}): {exc}") from None
        finally:
            transformers.logging.set_verbosity(verbosity)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 512
        self.max_context = int(max_context or limit)
        self._lock = threading.Lock()  # one forward at a time (the HTTP test server shares one model)
        # transformers >= 5.2 names the key/value cache argument ``cache``; older versions ``past_key_values``.
        forward = inspect.signature(self._decoder_body().forward).parameters
        self._cache_arg = "cache" if "cache" in forward else "past_key_values"
        self.model, self.choice = prepare_model(self.model, precision, kind="llm", path=path, encoder=False,
                                                scores_of=self._calibration_scores,
                                                query_ids=[p.query_id for p in calibration_pairs()[:LLM_CALIBRATION_PAIRS]])
        self.precision = self.choice.precision
        self.usage = LLMUsage()  # calibration is not the caller's work

    def _calibration_scores(self, net):
        pairs = calibration_pairs()[:LLM_CALIBRATION_PAIRS]
        saved, self.model = self.model, net
        try:
            prompts = [self.render(f"Passage: {p.passage}\nWrite a question that this passage answers.") for p in pairs]
            return np.array([row[0] for row in self.logprobs(prompts, [[p.query] for p in pairs])])
        finally:
            self.model = saved

    def runtime_settings(self) -> dict[str, str]:
        """Precision and threads, with the reasons, for the trace."""
        return self.choice.as_settings(self.threads)

    def __repr__(self) -> str:
        return f"TransformersLLM({self.name!r})"

    # -- text -------------------------------------------------------------------------------
    def render(self, message: str, answer_prefix: str = "") -> str:
        return render_prompt(None if self.seq2seq else self.tokenizer, message, answer_prefix)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        return truncate_tokens(self.tokenizer, text, max_tokens)

    def _split(self, prompt: str, continuation: str) -> tuple[list[int], int]:
        """Token ids of ``prompt + continuation`` and the index of the first continuation token."""
        enc = self.tokenizer(prompt + continuation, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
        while len(ids) > 1 and tuple(offsets[-1]) == (0, 0):  # a trailing [SEP] or </s> is not text
            ids.pop()
            offsets.pop()
        boundary = len(prompt)
        split = next((i for i, (start, end) in enumerate(offsets) if end > boundary and end > start), len(ids))
        if split == 0:
            raise LLMError("an empty prompt gives the model nothing to condition on")
        return ids, split

    def _check_length(self, n: int) -> None:
        if n > self.max_context:
            raise LLMError(f"a prompt of {n} tokens exceeds {self.name}'s context of {self.max_context} tokens; "
                           "truncate the passages (max_passage_tokens) or use fewer per prompt")

    # -- scoring ----------------------------------------------------------------------------
    def logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
        if self.seq2seq:
            return self._seq2seq_logprobs(prompts, continuations)
        items: list[tuple[int, int, tuple[int, ...], list[int], int]] = []
        for p, (prompt, conts) in enumerate(zip(prompts, continuations)):
            self.usage.calls += 1
            prompt_tokens = None
            for c, cont in enumerate(conts):
                ids, split = self._split(prompt, cont)
                self._check_length(len(ids))
                prompt_tokens = split if prompt_tokens is None else prompt_tokens
                items.append((p, c, tuple(ids[:-1]), ids, split))
            self.usage.prompt_tokens += prompt_tokens or self.count_tokens(prompt)
        # Each distinct input sequence runs once; an item reads the positions predicting its tokens.
        sequences = sorted({item[2] for item in items if item[4] < len(item[3])})
        needed: dict[tuple[int, ...], set[int]] = {s: set() for s in sequences}
        for _, _, seq, ids, split in items:
            if split < len(ids):
                needed[seq].update(range(split - 1, len(ids) - 1))
        rows = self._log_softmax_at(sequences, needed)
        out = [[0.0] * len(conts) for conts in continuations]
        for p, c, seq, ids, split in items:
            if split < len(ids):
                table = rows[seq]
                out[p][c] = float(sum(table[pos][ids[pos + 1]] for pos in range(split - 1, len(ids) - 1)))
        return out

    def _log_softmax_at(self, sequences: list[tuple[int, ...]], needed: dict) -> dict:
        """For each sequence, ``{position: log-softmax row}`` at the positions it needs."""
        import torch  # deferred: torch takes long to import

        rows: dict[tuple[int, ...], dict[int, torch.Tensor]] = {}
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            shared = _common_prefix(chunk) if self.prefix_reuse and len(chunk) > 1 else 0
            shared = min(shared, min(len(s) for s in chunk) - 1)
            with self._lock, torch.inference_mode():
                if shared >= self.min_shared_prefix:
                    hidden = self._forward_with_shared_prefix(chunk, shared)
                else:
                    hidden = self._forward(chunk)
                    self.usage.forward_tokens += sum(len(s) for s in chunk)
                head = self.model.get_output_embeddings()
                for b, seq in enumerate(chunk):
                    positions = sorted(needed[seq])
                    logits = head(hidden[b, positions]).float()
                    table = torch.log_softmax(logits, dim=-1)
                    rows[seq] = {pos: table[i] for i, pos in enumerate(positions)}
        return rows

    def _decoder_body(self):
        return self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.base_model

    def _forward(self, chunk: list[tuple[int, ...]]):
        import torch  # deferred: torch takes long to import

        width = max(len(s) for s in chunk)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in chunk], device=self.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in chunk], device=self.device)
        return self._decoder_body()(input_ids=ids, attention_mask=mask).last_hidden_state

    def _forward_with_shared_prefix(self, chunk: list[tuple[int, ...]], shared: int):
        """Run ``chunk[0][:shared]`` once, then every suffix on a copy of its key/value cache."""
        import torch  # deferred: torch takes long to import

        body = self._decoder_body()
        prefix = torch.tensor([list(chunk[0][:shared])], device=self.device)
        cache_arg = self._cache_arg
        first = body(input_ids=prefix, use_cache=True)
        cache = getattr(first, cache_arg)
        cache.batch_repeat_interleave(len(chunk))
        suffixes = [list(s[shared:]) for s in chunk]
        width = max(len(s) for s in suffixes)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=self.device)
        mask = torch.tensor([[1] * (shared + len(s)) + [0] * (width - len(s)) for s in suffixes], device=self.device)
        rest = body(input_ids=ids, attention_mask=mask, use_cache=True, **{cache_arg: cache}).last_hidden_state
        self.usage.forward_tokens += shared + sum(len(s) for s in suffixes)
        return torch.cat([first.last_hidden_state.expand(len(chunk), -1, -1), rest], dim=1)

    def _seq2seq_logprobs(self, prompts, continuations) -> list[list[float]]:
        import torch  # deferred: torch takes long to import

        pairs = [(p, c, prompt, cont) for p, (prompt, conts) in enumerate(zip(prompts, continuations))
                 for c, cont in enumerate(conts)]
        for prompt in prompts:
            self.usage.calls += 1
            self.usage.prompt_tokens += self.count_tokens(prompt)
        out = [[0.0] * len(conts) for conts in continuations]
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start:start + self.batch_size]
            enc = self.tokenizer([x[2] for x in chunk], return_tensors="pt", padding=True)
            enc.pop("token_type_ids", None)
            self._check_length(enc["input_ids"].shape[1])
            labels = self.tokenizer([x[3] for x in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            target = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
            with self._lock, torch.inference_mode():
                logits = self.model(**enc.to(self.device), labels=target.to(self.device)).logits.float()
            table = torch.log_softmax(logits, dim=-1)
            self.usage.forward_tokens += int(enc["attention_mask"].sum() + labels["attention_mask"].sum())
            for b, (p, c, _, _) in enumerate(chunk):
                keep = target[b] != -100
                out[p][c] = float(table[b, keep].gather(1, target[b, keep].unsqueeze(1).to(table.device)).sum())
        return out

    # -- generation -------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        import torch  # deferred: torch takes long to import

        out: list[str] = []
        tok = self.tokenizer
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            side = tok.padding_side
            tok.padding_side = "left"
            try:
                enc = tok(chunk, return_tensors="pt", padding=True)
            finally:
                tok.padding_side = side
            enc.pop("token_type_ids", None)
            self._check_length(enc["input_ids"].shape[1] + (0 if self.seq2seq else max_new_tokens))
            self.usage.calls += len(chunk)
            self.usage.prompt_tokens += int(enc["attention_mask"].sum())
            with self._lock, torch.inference_mode():
                generated = self.model.generate(**enc.to(self.device), max_new_tokens=max_new_tokens, do_sample=False,
                                                pad_token_id=tok.pad_token_id)
            new = generated if self.seq2seq else generated[:, enc["input_ids"].shape[1]:]
            self.usage.generated_tokens += int((new != tok.pad_token_id).sum())
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        return out


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    first, n = sequences[0], min(len(s) for s in sequences)
    for i in range(n):
        token = first[i]
        if any(s[i] != token for s in sequences):
            return i
    return n


_LOADED: dict[tuple, LLM] = {}
_LOAD_LOCK = threading.Lock()


def open_llm(spec: str | LLM, **options: Any) -> LLM:
    """An :class:`LLM` for ``spec``: an LLM object (returned as is), an ``http(s)://`` base URL of an
    OpenAI-compatible server (options go to :class:`~rerank.runtimes.openai_http.OpenAICompatibleLLM`),
    or a short name, Hub id or path of a local model (options go to :class:`TransformersLLM`).
    Local models are loaded once per process and shared by every stage that names them."""
    if not isinstance(spec, str):
        return spec
    if spec.startswith(("http://", "https://")):
        options.pop("precision", None)  # a server runs in its own precision
        return OpenAICompatibleLLM(spec, **options)
    key = (spec, tuple(sorted(options.items())))
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = TransformersLLM(spec, **options)
        return _LOADED[key]
