"""The lexical tokenizer every BM25 backend shares, so backends differ only in scoring."""
from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rerank.extras import require

LANGUAGES = ("en", "zh")
"""The languages a :class:`Tokenizer` reads (``zh``: Chinese segmentation)."""
CHINESE_SEGMENTATIONS = ("bigram", "jieba")
"""How Chinese text is split: character bigrams or jieba words."""
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


@functools.cache
def _stopwords(name: str) -> frozenset[str]:
    from bm25s import stopwords as sw  # deferred: bm25s takes long to import

    table = {"en": sw.STOPWORDS_EN, "en_plus": sw.STOPWORDS_EN_PLUS, "zh": sw.STOPWORDS_CHINESE}
    if name not in table:
        raise ValueError(f"unknown stopword list {name!r}; choose from {sorted(table)}")
    return frozenset(table[name])


@functools.cache
def _stemmer(algorithm: str):
    import Stemmer  # deferred: Stemmer takes long to import

    if algorithm not in Stemmer.algorithms():
        raise ValueError(f"unknown stemmer {algorithm!r}; PyStemmer offers {Stemmer.algorithms()}")
    return Stemmer.Stemmer(algorithm)


STEM_CACHE_SIZE = 1_000_000
"""How many distinct words' stems a process keeps per stemmer (a collection's vocabulary
repeats, so most words of a new batch were stemmed before); past it the cache starts again."""


@functools.cache
def _stem_cache(algorithm: str) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Tokenizer:
    """Lowercasing, regex word splitting, stopword removal and Snowball stemming (PyStemmer).

    ``language="zh"`` tokenizes runs of Chinese characters into overlapping character bigrams
    (``chinese="bigram"``, no dictionary needed) or into jieba words (``chinese="jieba"``);
    any Latin text inside is handled as in English.
    """

    language: str = "en"
    lowercase: bool = True
    stopwords: str | None = "en"
    stemmer: str | None = "english"
    pattern: str = r"(?u)\b\w\w+\b"
    chinese: str = "bigram"

    def __post_init__(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, got {self.language!r}")
        if self.chinese not in CHINESE_SEGMENTATIONS:
            raise ValueError(f"chinese must be one of {CHINESE_SEGMENTATIONS}, got {self.chinese!r}")
        if self.stopwords:
            _stopwords(self.stopwords)
        if self.stemmer:
            _stemmer(self.stemmer)
        re.compile(self.pattern)

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        """Tokenize many texts; stems are computed once per distinct word (and kept, see
        :data:`STEM_CACHE_SIZE`)."""
        words = [self.words(t) for t in texts]
        if not self.stemmer:
            return words
        stems = self.stem_table({w for ws in words for w in ws})
        return [[stems.get(w, w) for w in ws] for ws in words]

    def stem_table(self, distinct: set[str]) -> dict[str, str]:
        """A table holding the stem of every word of ``distinct`` (Chinese words are left
        whole: look them up with ``table.get(word, word)``); the process's cache for this
        stemmer, so later calls stem only words not seen before."""
        stems = _stem_cache(self.stemmer or "")
        new = {w for w in distinct if w not in stems}
        if len(stems) + len(new) > STEM_CACHE_SIZE:
            stems.clear()
            new = set(distinct)
        fresh = sorted(w for w in new if not _CJK.search(w))
        if fresh and self.stemmer:
            stems.update(zip(fresh, _stemmer(self.stemmer).stemWords(fresh)))
        return stems

    def words(self, text: str) -> list[str]:
        """The words of one text before stemming: lowercased, split, stopwords removed."""
        if self.lowercase:
            text = text.lower()
        if self.language == "zh":
            words = self._chinese_words(text)
        else:
            words = re.findall(self.pattern, text)
        if self.stopwords:
            stop = _stopwords(self.stopwords)
            words = [w for w in words if w not in stop]
        return words

    def _chinese_words(self, text: str) -> list[str]:
        if self.chinese == "jieba":
            jieba = require("jieba", "chinese", "chinese='jieba'")

            jieba.setLogLevel(60)
            words: list[str] = []
            for piece in jieba.cut(text):
                words.extend(re.findall(self.pattern, piece) if not _CJK.fullmatch(piece) else [piece])
            return words
        out: list[str] = []
        position = 0
        for run in _CJK.finditer(text):
            out.extend(re.findall(self.pattern, text[position:run.start()]))
            chars = run.group()
            out.extend([chars] if len(chars) == 1 else [chars[i:i + 2] for i in range(len(chars) - 1)])
            position = run.end()
        out.extend(re.findall(self.pattern, text[position:]))
        return out

    def to_dict(self) -> dict:
        """The settings as plain data (stored in index manifests)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        """Rebuild a tokenizer from :meth:`to_dict` output."""
        return cls(**data)
