"""Recipes: how a model family turns (query, passage) into a score, as data a user can read,
override and add.

A :class:`Recipe` holds everything its authors' code does around the model: the input text
(system prompt, chat-template pieces, instruction, query and passage templates), how a long
input is cut (which part, how much of the budget the query may take), the padding side, which
output logits are read and how they become a score. The scorers (:mod:`rerank.score.causal_lm`,
:mod:`rerank.score.t5`, :mod:`rerank.score.colbert`, :mod:`rerank.score.cross_encoder`) run any
recipe of their family; :func:`rerank.load` picks the recipe from the model's own files
(:mod:`rerank.score.detect`).

Add one with :func:`register_recipe` (or pass a :class:`Recipe`, or a name plus overrides, as
``recipe=`` to a scorer)::

    from rerank.recipes import recipe
    mine = recipe("qwen3-reranker").replace(name="qwen3-legal", instruction="Find the statute that applies")

Two ways to cut an input (``layout``):

* ``whole``: the query and passage are written into one ``template`` and the text is cut at its
  end to fit ``max_length`` less the ``prefix`` and ``suffix`` (Qwen3-Reranker, monoT5, RankT5);
* ``split``: ``query_template`` is cut to ``query_share`` of ``max_length``, then ``sep`` and
  ``passage_template`` follow and the passage is cut so that the pair fits ``max_length``;
  ``prefix`` and ``suffix`` come around it (bge-reranker-v2-gemma, mxbai-rerank-v2).

How logits become a score (``score``):

* ``softmax``: the probability of the last of ``tokens`` among them (Qwen3: ``no``/``yes``;
  monoT5: ``▁false``/``▁true``);
* ``difference``: ``logit(tokens[1]) - logit(tokens[0])`` (mxbai-rerank-v2: ``0``/``1``);
* ``logit``: the raw logit of ``tokens[0]`` (bge-reranker-v2-gemma's ``Yes``; RankT5's
  ``<extra_id_10>``);
* ``classifier``: a sequence-classification head (BERT-style cross-encoders);
* ``maxsim``: late interaction (ColBERT).

A two-token ``softmax`` is scored as the log-odds of the two by default (the same order as the
probability, without saturating into ties); ``normalize=True`` returns the probability itself.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from rerank.errors import RerankError
from rerank.hf_tokenizer import tokenize
from rerank.registry import Registry

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

LAYOUTS = ("whole", "split", "pair")
_TUPLE_FIELDS = ("tokens", "model_types", "markers", "card_phrases", "hub_ids", "architectures", "files", "module_types")
NETWORKS = ("encoder", "causal-lm", "seq2seq")
SCORES = ("softmax", "difference", "logit", "classifier", "maxsim")
PADDING_SIDES = ("left", "right")


class RecipeError(RerankError, ValueError):
    """A recipe that is unknown, malformed, or does not fit the model it is given."""


@dataclass(frozen=True)
class Recipe:
    """How one model family scores a (query, passage) pair; see the module docstring.

    ``stage``: the stage kind that runs the recipe (``causal-reranker``, ``t5-reranker``,
    ``duot5``, ``colbert``, ``cross-encoder``). ``model_types``: the ``config.json``
    ``model_type`` values it fits; ``markers``: lower-case names that, in a model card's front
    matter or title or the name a model was saved under, say it uses this recipe;
    ``card_phrases``: lower-case text of the recipe's own prompt or code that its model cards
    show in their usage example; ``hub_ids``: published checkpoints that use it. ``network``:
    what runs it (``encoder``, ``causal-lm`` or ``seq2seq``), so detection knows which recipes a
    causal LM or a T5 may have; ``architectures``, ``files`` and ``module_types``: a ``config.json``
    architecture, a file in the folder, or a ``modules.json`` type (substring) that by itself says
    a model uses this recipe (ColBERT's ``HF_ColBERT``, ``artifact.metadata``, PyLate's modules). ``source``: where the recipe comes from.
    """

    name: str
    stage: str
    description: str = ""
    layout: str = "whole"
    template: str = "{query} {passage}"
    query_template: str = "{query}"
    passage_template: str = "{passage}"
    sep: str = ""
    prefix: str = ""
    suffix: str = ""
    bos: bool = False
    special_tokens: bool = True
    instruction: str | None = None
    instruction_template: str = "{instruction}"
    query_share: float | None = None
    max_length: int = 512
    padding_side: str = "right"
    score: str = "softmax"
    tokens: tuple[str, ...] = ()
    token_lookup: str = "vocab"
    model_types: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    card_phrases: tuple[str, ...] = ()
    network: str = "encoder"
    architectures: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    module_types: tuple[str, ...] = ()
    hub_ids: tuple[str, ...] = ()
    source: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise RecipeError("a recipe needs a name")
        if self.layout not in LAYOUTS:
            raise RecipeError(f"recipe {self.name}: layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.score not in SCORES:
            raise RecipeError(f"recipe {self.name}: score must be one of {SCORES}, got {self.score!r}")
        if self.padding_side not in PADDING_SIDES:
            raise RecipeError(f"recipe {self.name}: padding_side must be left or right, got {self.padding_side!r}")
        if self.network not in NETWORKS:
            raise RecipeError(f"recipe {self.name}: network must be one of {NETWORKS}, got {self.network!r}")
        if self.token_lookup not in ("vocab", "encode"):
            raise RecipeError(f"recipe {self.name}: token_lookup must be 'vocab' or 'encode'")
        needed = {"softmax": 2, "difference": 2, "logit": 1}.get(self.score, 0)
        if needed and len(self.tokens) < needed:
            raise RecipeError(f"recipe {self.name}: score {self.score!r} needs {needed} tokens, got {list(self.tokens)}")
        if self.query_share is not None and not 0 < self.query_share <= 1:
            raise RecipeError(f"recipe {self.name}: query_share must be in (0, 1], got {self.query_share}")
        if self.max_length < 8:
            raise RecipeError(f"recipe {self.name}: max_length must be at least 8, got {self.max_length}")
        required = ([(self.template, "query"), (self.template, "passage")] if self.layout == "whole" else
                    [(self.query_template, "query"), (self.passage_template, "passage")] if self.layout == "split"
                    else [])
        for text, name in required:
            if "{" + name + "}" not in text:
                raise RecipeError(f"recipe {self.name}: template {text!r} lacks {{{name}}}")

    def replace(self, **changes: Any) -> Recipe:
        """A copy with ``changes`` (any field), checked like a new recipe."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise RecipeError(f"recipe {self.name}: no field {sorted(unknown)[0]!r}; fields are "
                              f"{', '.join(f.name for f in fields(self))}")
        for key in _TUPLE_FIELDS:
            if key in changes:
                changes[key] = tuple(changes[key])
        return replace(self, **changes)

    def config_reference(self) -> str | dict[str, Any]:
        """How a TOML config writes this recipe (:func:`config_form`)."""
        return config_form(self)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (for TOML, JSON and docs); fields left ``None`` are omitted."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        for key in _TUPLE_FIELDS:
            out[key] = list(out[key])
        out["options"] = dict(self.options)
        return out

    # -- input ids --------------------------------------------------------------------------
    @property
    def takes_instruction(self) -> bool:
        """Whether the recipe's input has a task instruction a user may change (Qwen3-Reranker, mxbai-rerank-v2)."""
        return "{instruction}" in self.template + self.query_template

    def instruction_text(self, instruction: str | None) -> str:
        """What the template's ``{instruction}`` becomes (empty without one)."""
        chosen = self.instruction if instruction is None else instruction
        return self.instruction_template.format(instruction=chosen) if chosen else ""

    def static_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int], list[int]]:
        """Token ids of the ``prefix``, ``sep`` and ``suffix`` (no special tokens added)."""
        return (_ids(tokenizer, self.prefix), _ids(tokenizer, self.sep), _ids(tokenizer, self.suffix))

    def encode(self, tokenizer: PreTrainedTokenizerBase, query: str, passage: str, *, instruction: str | None = None,
               max_length: int | None = None, static: tuple[list[int], list[int], list[int]] | None = None,
               second: str | None = None) -> tuple[list[int], bool]:
        """Token ids of one (query, passage) pair as the recipe's authors build them, and whether
        anything was cut. ``static``: :meth:`static_ids`, computed once by the caller;
        ``second``: the other passage of a pairwise recipe (its template's ``{second}``)."""
        limit = max_length or self.max_length
        prefix, sep, suffix = static if static is not None else self.static_ids(tokenizer)
        extra = self.instruction_text(instruction)
        if self.layout == "whole":
            body = self.template.format(instruction=extra, query=query, passage=passage,
                                        **({"second": second} if second is not None else {}))
            budget = limit - len(prefix) - len(suffix)
            if budget < 1:
                raise RecipeError(f"recipe {self.name}: max_length {limit} leaves no room beside its "
                                  f"{len(prefix) + len(suffix)} fixed tokens")
            full = tokenize(tokenizer, body, add_special_tokens=self.special_tokens)["input_ids"]
            if len(full) <= budget:
                return prefix + list(full) + suffix, False
            if not self.template.rstrip().endswith("{passage}"):
                # Text after the passage (monoT5's "Relevant:") is part of what the model scores: cut
                # the passages, never the input's end.
                fitted = self._fit_passages(tokenizer, extra, query, passage, second, budget)
                if fitted is not None:
                    return prefix + fitted + suffix, True
            cut = tokenize(tokenizer, body, add_special_tokens=self.special_tokens, truncation=True, max_length=budget)
            return prefix + list(cut["input_ids"]) + suffix, True
        if self.layout == "split":
            query_ids = _ids(tokenizer, self.query_template.format(instruction=extra, query=query))
            share = int(limit * self.query_share) if self.query_share else limit
            cut = len(query_ids) > share
            query_ids = query_ids[:share]
            if self.bos:
                query_ids = [tokenizer.bos_token_id, *query_ids]
            passage_ids = sep + _ids(tokenizer, self.passage_template.format(passage=passage))
            room = max(limit - len(query_ids), 0)
            cut = cut or len(passage_ids) > room
            return prefix + query_ids + passage_ids[:room] + suffix, cut
        raise RecipeError(f"recipe {self.name}: layout {self.layout!r} is encoded by its scorer's tokenizer")

    def _fit_passages(self, tokenizer, extra: str, query: str, passage: str, second: str | None,
                      budget: int) -> list[int] | None:
        """The ``whole`` input with its passage (and a pairwise recipe's second passage, each to an
        equal share) cut to fit ``budget`` tokens, the template's text after them intact; None
        when the template without passages is already too long."""
        slots = {"passage": passage, **({"second": second} if second is not None else {})}

        def body(texts: dict[str, str]) -> list[int]:
            return list(tokenize(tokenizer, self.template.format(instruction=extra, query=query, **texts),
                                 add_special_tokens=self.special_tokens)["input_ids"])

        room = budget - len(body({k: "" for k in slots}))
        if room < len(slots):
            return None
        spans = {k: tokenize(tokenizer, v, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
                 for k, v in slots.items()}
        share = room // len(slots)
        while share > 0:
            texts = {k: slots[k][:spans[k][min(share, len(spans[k])) - 1][1]] if spans[k] else "" for k in slots}
            ids = body(texts)
            if len(ids) <= budget:
                return ids
            share -= max(1, (len(ids) - budget + len(slots) - 1) // len(slots))  # word pieces re-merge at the cut
        return None

    def fixed_tokens(self, tokenizer: PreTrainedTokenizerBase) -> int:
        """Tokens every input of this recipe has whatever the pair (template, prefix, suffix)."""
        prefix, sep, suffix = self.static_ids(tokenizer)
        if self.layout == "whole":
            return len(prefix) + len(suffix) + len(_ids(tokenizer, self.template.format(
                instruction=self.instruction_text(None), query="", passage="", second="")))
        return len(prefix) + len(sep) + len(suffix) + int(self.bos)

    def score_token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        """The vocabulary ids of ``tokens``, checked to be single known tokens."""
        ids = []
        found: Any
        for token in self.tokens:
            if self.token_lookup == "vocab":
                found = tokenizer.convert_tokens_to_ids(token)
                unknown = found is None or (found == tokenizer.unk_token_id and token != tokenizer.unk_token)
            else:
                encoded = _ids(tokenizer, token)
                found, unknown = (encoded[0] if encoded else None), not encoded
            if unknown:
                raise RecipeError(f"recipe {self.name}: the tokenizer has no token {token!r}, so this model was "
                                  "not trained with this recipe; pass another recipe=")
            ids.append(int(found))
        return ids

    # -- scores -----------------------------------------------------------------------------
    def to_scores(self, logits: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Scores from the logits of :attr:`tokens` (a ``[pairs, len(tokens)]`` float tensor)."""
        import torch  # deferred: torch takes long to import

        if self.score == "logit":
            return torch.sigmoid(logits[:, 0]) if normalize else logits[:, 0]
        if self.score == "difference":
            diff = logits[:, 1] - logits[:, 0]
            return torch.sigmoid(diff) if normalize else diff
        if self.score == "softmax":
            if normalize:
                return torch.softmax(logits, dim=-1)[:, -1]
            if logits.shape[1] == 2:
                return logits[:, 1] - logits[:, 0]
            return torch.log_softmax(logits, dim=-1)[:, -1]
        raise RecipeError(f"recipe {self.name}: score {self.score!r} is computed by its scorer")

    def describe(self) -> str:
        """One line: the recipe, its layout and its score."""
        tokens = "/".join(self.tokens)
        return f"{self.name} ({self.stage}; {self.layout} layout; {self.score}{' of ' + tokens if tokens else ''})"


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenize(tokenizer, text, add_special_tokens=False)["input_ids"]) if text else []


RECIPES: Registry[Recipe] = Registry("recipe", "recipes", packages=("rerank.score",))
"""Every recipe by name, each registered in its family's module; other packages add recipes
through the ``rerank.recipes`` entry-point group (a module that calls :func:`register_recipe`)."""


def register_recipe(new: Recipe, *, replace_existing: bool = False) -> Recipe:
    """Add ``new`` to the recipes :func:`recipe` and model detection know."""
    known = RECIPES.registered(new.name)
    if known is not None and not replace_existing and known != new:
        raise RecipeError(f"a recipe named {new.name!r} exists; pass replace_existing=True to replace it")
    return RECIPES.add(new.name, new, replace=True)


def recipes() -> dict[str, Recipe]:
    """Every registered recipe, by name."""
    return RECIPES.as_dict()


def recipe(spec: str | Recipe | Mapping[str, Any], **overrides: Any) -> Recipe:
    """A recipe from its name, itself, or a mapping (``{"base": name, **overrides}`` or every
    field), with ``overrides`` applied."""
    if isinstance(spec, Recipe):
        found = spec
    elif isinstance(spec, str):
        known = recipes()
        if spec not in known:
            raise RecipeError(f"unknown recipe {spec!r}; known: {', '.join(sorted(known))}")
        found = known[spec]
    elif isinstance(spec, Mapping):
        table = dict(spec)
        base = table.pop("base", None)
        if base is not None:
            found = recipe(base).replace(**table)
        else:
            try:
                fields_of: dict[str, Any] = {k: tuple(v) if k in _TUPLE_FIELDS else v for k, v in table.items()}
                found = Recipe(**fields_of)
            except TypeError as exc:
                raise RecipeError(f"a recipe table needs 'base' or every required field: {exc}") from None
    else:
        raise RecipeError(f"recipe must be a name, a Recipe or a table, got {type(spec).__name__}")
    return found.replace(**overrides) if overrides else found


def config_form(chosen: Recipe) -> str | dict[str, Any]:
    """How a config writes ``chosen``: its name when registered unchanged, else every field."""
    return chosen.name if RECIPES.find(chosen.name) == chosen else chosen.as_dict()


def names_for(stage: str) -> Sequence[str]:
    """The recipes a stage kind runs."""
    return [name for name, r in RECIPES.items() if r.stage == stage]
