"""The ``POST /rerank`` wire format: Cohere's and text-embeddings-inference's request shapes in,
their response shapes out, and every way a request can be refused.

Cohere shape (``documents``)::

    {"query": "...", "documents": ["...", {"text": "..."}], "top_n": 3, "return_documents": true}
    -> {"id": "...", "results": [{"index": 1, "relevance_score": 0.93, "document": {"text": "..."}}],
        "meta": {...}}

TEI shape (``texts``)::

    {"query": "...", "texts": ["...", "..."], "raw_scores": false, "return_text": false}
    -> [{"index": 1, "score": 0.93}, {"index": 0, "score": 0.12}]

Results come best first. Refusals are ``{"error": message, "error_type": kind}`` with a 4xx
status; the message names the field or the limit.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, StrictStr, ValidationError
from scipy.special import expit as sigmoid

from rerank.serve.settings import ServeSettings


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, a short ``error_type`` and a message that
    says what to change."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def body(self) -> dict[str, str]:
        """The JSON error body (TEI's ``{"error", "error_type"}``)."""
        return {"error": self.message, "error_type": self.error_type}


def _document(value: Any) -> str | dict[str, Any]:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value
    raise ValueError('expected a string or an object (with a string "text", or the fields rank_fields names)')


Document = Annotated[Any, PlainValidator(_document, json_schema_input_type=str | dict)]
Direction = Annotated[str, PlainValidator(lambda v: _direction(v), json_schema_input_type=str)]


def _direction(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in ("left", "right"):
        raise ValueError('must be "Left" or "Right"')
    return value.lower()


class CohereRequest(BaseModel):
    """Cohere's rerank request (v1 and v2, as the official SDKs send it), with the options the
    service honours: ``model`` picks a served model; ``rank_fields`` (documents as objects: the
    named fields joined in order as ``field: value`` lines); ``max_tokens_per_doc`` (each document
    cut to that many tokens of the model's tokenizer); ``max_chunks_per_doc`` (a long document is
    read in up to that many windows that each fit the model, scored by its best); ``instruction``
    (for models trained with one); ``min_relevance``. Other fields are not Cohere's rerank API and
    are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: StrictStr
    documents: list[Document]
    top_n: Optional[StrictInt] = Field(default=None, ge=1)
    return_documents: StrictBool = False
    raw_scores: StrictBool = False
    model: Optional[StrictStr] = None
    rank_fields: Optional[list[StrictStr]] = Field(default=None, min_length=1)
    max_tokens_per_doc: Optional[StrictInt] = Field(default=None, ge=1)
    max_chunks_per_doc: Optional[StrictInt] = Field(default=None, ge=1)
    instruction: Optional[StrictStr] = None
    min_relevance: Optional[float] = Field(default=None, ge=0, le=1)
    budget_ms: Optional[float] = Field(default=None, gt=0)
    relevant_spans: Optional[Any] = None
    priority: Optional[Any] = None


UNSUPPORTED = {"relevant_spans": "this service does not return relevant spans",
               "priority": "this service answers requests in arrival order (per model)"}
"""Cohere fields the SDKs can send that this service cannot honour: refused when set, never ignored."""


class TeiRequest(BaseModel):
    """text-embeddings-inference's rerank request: ``truncate`` (false: an input longer than the
    model reads is refused with 413 naming the limit; true: the passage is cut) and
    ``truncation_direction`` (``Right``, the default, keeps a passage's start; ``Left`` its end),
    plus the service's own ``model``, ``instruction`` and ``min_relevance``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    query: StrictStr
    texts: list[StrictStr]
    raw_scores: StrictBool = False
    return_text: StrictBool = False
    truncate: Optional[StrictBool] = None
    truncation_direction: Optional[Direction] = None
    model: Optional[StrictStr] = None
    instruction: Optional[StrictStr] = None
    min_relevance: Optional[float] = Field(default=None, ge=0, le=1)
    budget_ms: Optional[float] = Field(default=None, gt=0)


@dataclass(frozen=True)
class RerankRequest:
    """A validated request, whichever shape it came in. ``documents`` are the texts the model
    reads (``rank_fields`` applied); ``originals`` what the caller sent (returned with
    ``return_documents``)."""

    shape: Literal["cohere", "tei"]
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool
    raw_scores: bool
    budget_ms: float | None = None
    """The request's own latency budget (ms), for a service that chooses cut-offs per request."""
    model: str | None = None
    originals: list[Any] | None = None
    instruction: str | None = None
    max_tokens_per_doc: int | None = None
    max_chunks_per_doc: int | None = None
    truncate: bool | None = None
    truncation_direction: str | None = None
    min_relevance: float | None = None


def _field_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def document_texts(documents: list[Any], rank_fields: list[str] | None) -> list[str]:
    """The text the model reads of each document: a string as is; an object's ``rank_fields``
    as ``field: value`` lines in the order given, or its ``text`` without them."""
    texts = []
    for i, doc in enumerate(documents):
        if isinstance(doc, str):
            texts.append(doc)
        elif rank_fields:
            missing = [f for f in rank_fields if f not in doc]
            if missing:
                raise RequestError(422, "validation", f"documents[{i}] has no field {missing[0]!r} of rank_fields "
                                                      f"{rank_fields}; it has {sorted(doc)[:10]}")
            texts.append("\n".join(f"{f}: {_field_text(doc[f])}" for f in rank_fields))
        elif isinstance(doc.get("text"), str):
            texts.append(doc["text"])
        else:
            raise RequestError(422, "validation", f'documents[{i}]: an object needs a string "text", or rank_fields '
                                                  "naming the fields to read")
    return texts


def _location(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _validation_message(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors[:3]:
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "is required"
        elif err["type"] == "extra_forbidden":
            message = "is not a field of this request shape (it would be ignored, so it is refused)"
        parts.append(f"{_location(err['loc'])}: {message}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def parse_request(body: bytes, settings: ServeSettings) -> RerankRequest:
    """Decode, validate and limit-check one request body, or raise :class:`RequestError`."""
    if len(body) > settings.max_body_bytes:
        raise RequestError(413, "limit", f"request body of {len(body):,} bytes exceeds max_body_bytes="
                                         f"{settings.max_body_bytes:,}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, "encoding", f"request body is not valid UTF-8 (byte {exc.start}: "
                                            f"{body[exc.start:exc.start + 1]!r})") from None
    if not text.strip():
        raise RequestError(400, "json", "request body is empty; send a JSON object with query and documents")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise RequestError(400, "json", "request body nests too deeply to be a rerank request") from None
    except ValueError as exc:
        raise RequestError(400, "json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(422, "validation", f"request body must be a JSON object, got a JSON {_json_type(data)}")
    if "texts" in data and "documents" in data:
        raise RequestError(422, "validation", "give either documents (Cohere shape) or texts (TEI shape), not both")
    model = TeiRequest if "texts" in data else CohereRequest
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise RequestError(422, "validation", _validation_message(exc)) from None
    if isinstance(parsed, TeiRequest):
        request = RerankRequest("tei", parsed.query, parsed.texts, None, parsed.return_text, parsed.raw_scores,
                                parsed.budget_ms, model=parsed.model, instruction=parsed.instruction,
                                truncate=parsed.truncate, truncation_direction=parsed.truncation_direction,
                                min_relevance=parsed.min_relevance)
        field = "texts"
    else:
        for name, why in UNSUPPORTED.items():
            if getattr(parsed, name) is not None:
                raise RequestError(400, "unsupported", f"{name} is not supported: {why}; leave it out")
        texts = document_texts(parsed.documents, parsed.rank_fields)
        request = RerankRequest("cohere", parsed.query, texts, parsed.top_n, parsed.return_documents,
                                parsed.raw_scores, parsed.budget_ms, model=parsed.model, originals=parsed.documents,
                                instruction=parsed.instruction, max_tokens_per_doc=parsed.max_tokens_per_doc,
                                max_chunks_per_doc=parsed.max_chunks_per_doc, min_relevance=parsed.min_relevance)
        field = "documents"
    if request.instruction is not None and not request.instruction.strip():
        raise RequestError(422, "validation", "instruction is empty; leave it out to use the model's own")
    _check_limits(request, field, settings)
    return request


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "null")


def _check_limits(request: RerankRequest, field: str, settings: ServeSettings) -> None:
    if not request.query.strip():
        raise RequestError(422, "validation", "query is empty")
    if not request.documents:
        raise RequestError(422, "validation", f"{field} is empty; send at least one document to rank")
    if len(request.documents) > settings.max_documents:
        raise RequestError(413, "limit", f"{len(request.documents):,} {field} exceed max_documents="
                                         f"{settings.max_documents:,} per request")
    if len(request.query) > settings.max_document_chars:
        raise RequestError(413, "limit", f"query of {len(request.query):,} characters exceeds max_document_chars="
                                         f"{settings.max_document_chars:,}")
    _check_encodable(request.query, "query")
    for i, doc in enumerate(request.documents):
        _check_encodable(doc, f"{field}[{i}]")
        if len(doc) > settings.max_document_chars:
            raise RequestError(413, "limit", f"{field}[{i}] has {len(doc):,} characters, more than "
                                             f"max_document_chars={settings.max_document_chars:,}")


def _check_encodable(text: str, where: str) -> None:
    # JSON escapes can spell lone surrogates (\\ud800), which are not text and break tokenizers.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RequestError(422, "encoding", f"{where} holds an unpaired surrogate ({text[exc.start]!r} at "
                                            f"character {exc.start}); send valid Unicode") from None


def render_response(request: RerankRequest, ranked: list[tuple[int, float]], *, normalize: bool,
                    request_id: str, pipeline: str, meta: dict[str, Any] | None = None,
                    probability: Callable[[float], float] | None = None, min_relevance: float | None = None) -> Any:
    """The JSON answer for ``ranked`` ((document index, pipeline score) pairs, best first);
    ``meta`` joins the Cohere shape's ``meta`` (the TEI shape has none). ``probability`` maps a
    calibrated pipeline's score to its probability of relevance (else the sigmoid, when
    ``normalize``); results whose relevance is below ``min_relevance`` are left out."""
    raw = request.raw_scores or (not normalize and probability is None)
    if min_relevance is not None:
        relevance = probability or (lambda s: float(sigmoid(s)))
        ranked = [(i, s) for i, s in ranked if relevance(s) >= min_relevance]
    if request.top_n is not None:
        ranked = ranked[: request.top_n]
    convert = probability or (lambda s: float(sigmoid(s)))
    scored = [(index, score if raw else convert(score)) for index, score in ranked]
    if request.shape == "tei":
        return [{"index": i, "score": s, **({"text": request.documents[i]} if request.return_documents else {})}
                for i, s in scored]
    originals = request.originals or request.documents

    def document(i: int) -> dict[str, Any]:
        sent = originals[i]
        return sent if isinstance(sent, dict) else {"text": sent}

    results = [{"index": i, "relevance_score": s, **({"document": document(i)} if request.return_documents else {})}
               for i, s in scored]
    return {"id": request_id, "results": results,
            "meta": {"pipeline": pipeline, "billed_units": {"search_units": 1}, **(meta or {})}}
