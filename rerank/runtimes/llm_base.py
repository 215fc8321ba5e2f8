"""What every LLM backend shares: the :class:`LLM` interface, usage counters, errors, prompt
rendering and truncation, and tokenizer loading (a GGUF model's from its dequantized copy).

:mod:`rerank.runtimes.local_llm` (local models, :func:`~rerank.runtimes.local_llm.open_llm`) and
:mod:`rerank.runtimes.openai_http` (OpenAI-compatible servers) both build on this module.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rerank.atomic import atomic_directory
from rerank.errors import RerankError
from rerank.models import gguf_file, resolve

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class LLMError(RerankError):
    """An LLM that cannot answer: a prompt over its context, a refused or malformed reply."""


@dataclass
class LLMUsage:
    """What an LLM has done since it was made: prompts sent (``calls``), their tokens, and the
    tokens actually run through the model (fewer when shared prefixes are reused)."""

    calls: int = 0
    prompt_tokens: int = 0
    forward_tokens: int = 0
    generated_tokens: int = 0


@runtime_checkable
class LLM(Protocol):
    """What the LLM re-rankers need from a model."""

    name: str
    usage: LLMUsage
    max_context: int

    def render(self, message: str, answer_prefix: str = "") -> str:
        """The prompt text for a user ``message``, ending where the answer (``answer_prefix``) goes on."""

    def logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[str]]) -> list[list[float]]:
        """For each prompt, the log-probability of each of its continuations (summed over tokens)."""

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        """Greedy continuations of each prompt, at most ``max_new_tokens`` tokens each."""

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` (no special tokens)."""

    def truncate(self, text: str, max_tokens: int) -> tuple[str, bool]:
        """``text`` cut to at most ``max_tokens`` tokens, and whether it was cut."""


def render_prompt(tokenizer: PreTrainedTokenizerBase | None, message: str, answer_prefix: str = "") -> str:
    """``message`` as a user turn in ``tokenizer``'s chat template (if it has one) with the
    assistant's answer opened by ``answer_prefix``; plain text otherwise."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                               add_generation_prompt=True)
        return str(prompt) + answer_prefix
    return f"{message}\n{answer_prefix}" if answer_prefix else message


def truncate_tokens(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> tuple[str, bool]:
    """``text`` cut after its first ``max_tokens`` tokens (at a character offset, so the kept
    text is the original's prefix), and whether it was cut."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return text, False
    end = enc["offset_mapping"][max_tokens - 1][1] if max_tokens > 0 else 0
    return text[:end], True


def cache_dir() -> Path:
    """Where converted models are cached: ``$RERANK_CACHE`` or ``~/.cache/rerank``."""
    return Path(os.environ.get("RERANK_CACHE") or Path.home() / ".cache" / "rerank")


def _dequantized_gguf(folder: str, gguf: str) -> str:
    """A safetensors copy of a GGUF model, converted on first use (tens of seconds) and cached,
    so later loads take under a second."""
    import transformers  # deferred: transformers takes long to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # deferred: transformers takes long to import


    source = Path(folder) / gguf
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{source.stem}-{key}"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return str(target)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf)
    finally:
        transformers.logging.set_verbosity(verbosity)
    # The weights are plain tensors once dequantized; drop the GGUF marker so they can be saved.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always present
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return str(target)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a short model name, Hub id or path (a GGUF's from its cached copy)."""
    from transformers import AutoTokenizer  # deferred: transformers takes long to import


    path, gguf = resolve(name), gguf_file(name)
    return AutoTokenizer.from_pretrained(_dequantized_gguf(path, gguf) if gguf else path)
