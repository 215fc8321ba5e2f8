"""API keys of the service: who may call it, and how often.

A key file holds one key a line, ``name:sha256-of-key[:requests-per-minute]`` (``#`` starts a
comment); the service keeps only the digests, so the file can be read by operators without
revealing a key. ``rerank serve --api-keys FILE`` reads one, as does ``RERANK_API_KEYS`` (the same
lines, or separated by commas); ``rerank serve --hash-key`` prints the line for a new key.

A caller sends its key as ``Authorization: Bearer <key>`` (what the Cohere, Jina, Voyage and
OpenAI SDKs send) or ``X-API-Key: <key>``. A missing, wrong or malformed key, a key sent twice
or in both headers, gets 401 with one constant body; the presented key is hashed and compared
with every stored digest in constant time. Only a key's *name* ever reaches logs, metrics and
traces. A key with a rate limit that is spent gets 429 with ``Retry-After`` (a token bucket of
one minute's requests, refilled continuously).
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rerank.errors import RerankError

UNAUTHORIZED_BODY = {"error": "missing or invalid API key", "error_type": "unauthorized"}
"""The one body every refused credential gets, whatever was wrong with it."""
MAX_KEY_CHARS = 256
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII, no spaces


class KeyFileError(RerankError, ValueError):
    """A key file line that cannot be read; the message names the file and line, never a key."""


class Unauthorized(Exception):
    """The request's credentials were missing, wrong or malformed (always the same answer)."""


class RateLimited(Exception):
    """The key's requests per minute are spent; ``retry_after`` seconds until the next one."""

    def __init__(self, name: str, retry_after: int) -> None:
        super().__init__(f"API key {name!r} is over its rate limit; retry after {retry_after} s")
        self.name = name
        self.retry_after = retry_after


def hash_key(key: str) -> str:
    """The hex SHA-256 of ``key``, as a key file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key_line(name: str, requests_per_minute: int | None = None) -> tuple[str, str]:
    """A fresh random key and its key file line (``name:digest[:rpm]``)."""
    if not _NAME.match(name):
        raise KeyFileError(f"a key name is 1-64 letters, digits or _.@-, got {name!r}")
    key = "rk-" + secrets.token_urlsafe(32)
    line = f"{name}:{hash_key(key)}" + (f":{requests_per_minute}" if requests_per_minute else "")
    return key, line


@dataclass
class _Bucket:
    rate: float  # requests per second
    capacity: float
    tokens: float
    updated: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ApiKey:
    """One allowed key: its name, the SHA-256 of the key and its requests per minute (None: unlimited)."""

    name: str
    digest: bytes
    requests_per_minute: int | None = None


class KeyRing:
    """The allowed keys, checked in constant time, with their rate limits."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self.keys = list(keys)
        if not self.keys:
            raise KeyFileError("no API keys given")
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise KeyFileError(f"API key names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")
        self._buckets = {k.name: _Bucket(k.requests_per_minute / 60, k.requests_per_minute, k.requests_per_minute)
                         for k in self.keys if k.requests_per_minute}
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str, where: str) -> KeyRing:
        """Keys from key file ``text`` (lines, or entries separated by commas); ``where`` names it in errors."""
        keys = []
        for number, raw in enumerate(re.split(r"[\n,]", text), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(":")
            at = f"{where}: entry {number}"
            if len(parts) not in (2, 3):
                raise KeyFileError(f"{at}: expected name:sha256-of-key[:requests-per-minute] (the line is not shown)")
            name, digest = parts[0].strip(), parts[1].strip().lower()
            if not _NAME.match(name):
                raise KeyFileError(f"{at}: a key name is 1-64 letters, digits or _.@-")
            if not _DIGEST.match(digest):
                raise KeyFileError(f"{at} ({name}): the second field must be the key's SHA-256 in hex (64 characters), "
                                   "not the key itself; `rerank serve --hash-key NAME` makes a key and its line")
            rpm = None
            if len(parts) == 3:
                if not parts[2].strip().isdigit() or int(parts[2]) < 1:
                    raise KeyFileError(f"{at} ({name}): requests per minute must be a positive whole number")
                rpm = int(parts[2])
            keys.append(ApiKey(name, bytes.fromhex(digest), rpm))
        return cls(keys)

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """The keys of a key file."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"{path}: cannot read the API key file ({type(exc).__name__})") from None
        return cls.parse(text, str(path))

    def authenticate(self, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> ApiKey:
        """The key a request's headers present, or :class:`Unauthorized`. ``headers``: (name,
        value) pairs as received (a repeated header is refused, not guessed between)."""
        items = headers.items() if isinstance(headers, Mapping) else headers
        presented = []
        for name, value in items:
            lower = name.lower()
            if lower == "authorization":
                scheme, _, token = value.partition(" ")
                if scheme.lower() != "bearer" or not token:
                    raise Unauthorized
                presented.append(token)
            elif lower == "x-api-key":
                presented.append(value)
        if len(presented) != 1:
            raise Unauthorized
        key = presented[0]
        if len(key) > MAX_KEY_CHARS or not _KEY.match(key):
            raise Unauthorized
        digest = hashlib.sha256(key.encode("ascii")).digest()
        found = None
        for candidate in self.keys:  # every digest compared, whichever matches
            if hmac.compare_digest(candidate.digest, digest):
                found = candidate
        if found is None:
            raise Unauthorized
        return found

    def spend(self, key: ApiKey) -> None:
        """Count one request of ``key``; :class:`RateLimited` when its minute's requests are spent."""
        bucket = self._buckets.get(key.name)
        if bucket is None:
            return
        with self._lock:
            now = time.monotonic()
            bucket.tokens = min(bucket.capacity, bucket.tokens + (now - bucket.updated) * bucket.rate)
            bucket.updated = now
            if bucket.tokens < 1:
                raise RateLimited(key.name, max(1, math.ceil((1 - bucket.tokens) / bucket.rate)))
            bucket.tokens -= 1
