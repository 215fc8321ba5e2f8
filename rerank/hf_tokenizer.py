"""Calling a Hugging Face tokenizer from several threads.

A fast tokenizer keeps its truncation and padding settings in the Rust tokenizer and sets them
before each call, so two threads calling one tokenizer with different settings race: one call
can run with the other's (a pair meant to be cut at 512 tokens comes back with 781). A search
backend calls one scorer from many threads, so every tokenizer call of the scorers goes through
:func:`tokenize`, which serialises the calls per tokenizer (tokenizing is a small share of a
scorer's time).
"""
from __future__ import annotations

import threading
from typing import Any

_GUARD = threading.Lock()


def _lock_of(tokenizer: Any) -> threading.Lock:
    lock = getattr(tokenizer, "_rerank_call_lock", None)
    if lock is None:
        with _GUARD:
            lock = getattr(tokenizer, "_rerank_call_lock", None)
            if lock is None:
                lock = threading.Lock()
                tokenizer._rerank_call_lock = lock
    return lock


def tokenize(tokenizer: Any, *args: Any, **kwargs: Any) -> Any:
    """``tokenizer(*args, **kwargs)``, one call at a time per tokenizer."""
    with _lock_of(tokenizer):
        return tokenizer(*args, **kwargs)
