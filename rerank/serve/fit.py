"""The request options that change what text a served model reads: ``max_tokens_per_doc``,
``max_chunks_per_doc``, TEI's ``truncate`` and ``truncation_direction``, and ``instruction``.

Tokens are counted by the tokenizer of the model that orders the final ranking (the last
model stage of the served pipeline that reads text), and a document's room is what fits beside
the query in one input of that model (:meth:`passage_budget`). A model that cannot count tokens
(BM25 re-scoring, a remote endpoint) refuses these options with a 400 rather than ignore them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rerank.hf_tokenizer import tokenize
from rerank.pipeline import Stage, leaves
from rerank.recipes import recipes
from rerank.score.windows import text_windows
from rerank.serve.protocol import RequestError, RerankRequest

TOKEN_OPTIONS = ("max_tokens_per_doc", "max_chunks_per_doc", "truncate", "truncation_direction")


@dataclass(frozen=True)
class FittedTexts:
    """What the model reads for one request: ``texts`` (a document's chunks each a text) and
    ``owner[i]``, the document text ``i`` comes from; ``chunked`` when a document may have several."""

    texts: list[str]
    owner: np.ndarray
    chunked: bool

    def best_per_document(self, scores: dict[int, float], documents: int) -> list[tuple[int, float]]:
        """(document, best chunk score) pairs, best first (ties: the earlier document), from each
        text's score by position."""
        best: dict[int, float] = {}
        for i, score in scores.items():
            doc = int(self.owner[i])
            if doc not in best or score > best[doc]:
                best[doc] = score
        return sorted(best.items(), key=lambda item: (-item[1], item[0]))[:documents]


def instruction_families() -> list[str]:
    """The recipes whose models take a task instruction."""
    return sorted(name for name, r in recipes().items() if r.takes_instruction)


def reads_instruction(pipeline: Stage) -> bool:
    """Whether some model of ``pipeline`` reads a query's instruction."""
    return any(getattr(leaf, "takes_instruction", False) for leaf in leaves(pipeline))


class TextFitter:
    """Applies the token options of a request with the tokenizer of ``stage`` (a scorer with
    ``tokenizer`` and ``passage_budget``)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.tokenizer = stage.tokenizer  # type: ignore[attr-defined]

    @classmethod
    def of(cls, pipeline: Stage) -> TextFitter | None:
        """The fitter of the last text-reading model in ``pipeline``, or None when it has none."""
        readers = [leaf for leaf in leaves(pipeline) if hasattr(leaf, "passage_budget") and hasattr(leaf, "tokenizer")]
        return cls(readers[-1]) if readers else None

    def budget(self, query: str, instruction: str | None) -> int:
        """Passage tokens that fit in one input beside ``query``."""
        if instruction is not None and getattr(self.stage, "takes_instruction", False):
            return int(self.stage.passage_budget(query, instruction))  # type: ignore[attr-defined]
        return int(self.stage.passage_budget(query))  # type: ignore[attr-defined]

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return list(tokenize(self.tokenizer, text, add_special_tokens=False, return_offsets_mapping=True,
                             verbose=False)["offset_mapping"])

    def head(self, text: str, tokens: int) -> str:
        """The text of ``text``'s first ``tokens`` tokens."""
        spans = self._offsets(text)
        return text if len(spans) <= tokens else text[: spans[tokens - 1][1]]

    def tail(self, text: str, tokens: int) -> str:
        """The text of ``text``'s last ``tokens`` tokens."""
        spans = self._offsets(text)
        return text if len(spans) <= tokens else text[spans[len(spans) - tokens][0]:]

    def fit(self, request: RerankRequest, model: str) -> FittedTexts:
        """The texts to score for ``request`` (its token options applied), or a :class:`RequestError`."""
        texts = list(request.documents)
        if request.max_tokens_per_doc is not None:
            texts = [self.head(t, request.max_tokens_per_doc) for t in texts]
        room = self.budget(request.query, request.instruction)
        field = "texts" if request.shape == "tei" else "documents"
        if request.truncate is False:
            for i, text in enumerate(texts):
                count = len(self._offsets(text))
                if count > room:
                    raise RequestError(413, "too_long", f"{field}[{i}] has {count} tokens; model {model!r} reads at "
                                                        f"most {room} beside this query (max_length "
                                                        f"{getattr(self.stage, 'max_length', '?')}); send truncate=true "
                                                        "to have it cut, or a shorter text")
        if request.max_chunks_per_doc is not None and request.max_chunks_per_doc > 1:
            cut = text_windows(self.tokenizer, [request.query] * len(texts), texts, [room] * len(texts),
                               max_windows=request.max_chunks_per_doc)
            return FittedTexts(cut.texts, cut.owner, True)
        if request.truncation_direction == "left":
            texts = [self.tail(t, room) for t in texts]
        return FittedTexts(texts, np.arange(len(texts)), False)


def fit_request(pipeline: Stage, fitter: TextFitter | None, request: RerankRequest, model: str) -> FittedTexts:
    """:meth:`TextFitter.fit` for ``request`` on the served ``pipeline`` named ``model``, after
    refusing what the model cannot honour (an instruction it does not read, token options
    without a tokenizer)."""
    if request.instruction is not None and not reads_instruction(pipeline):
        raise RequestError(400, "unsupported", f"instruction: model {model!r} takes no instruction; the families "
                                               f"trained with one are {', '.join(instruction_families())}")
    asked = [name for name in TOKEN_OPTIONS if getattr(request, name) not in (None, True)
             and not (name == "truncation_direction" and request.truncation_direction == "right")]
    if fitter is None:
        if asked:
            raise RequestError(400, "unsupported", f"{asked[0]}: model {model!r} has no tokenizer to count tokens "
                                                   "with (it does not read text through a transformer)")
        return FittedTexts(list(request.documents), np.arange(len(request.documents)), False)
    if not asked:
        return FittedTexts(list(request.documents), np.arange(len(request.documents)), False)
    return fitter.fit(request, model)
