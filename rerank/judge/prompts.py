"""Judging prompts as data: the text sent for each (query, passage), the answer prefix, and how
a grade is read from the answer.

Two are built in: ``umbrela`` (the descriptive prompt of Thomas et al. as UMBRELA reproduces it:
grade meanings, then the searcher's intent, how well the passage matches it and how far it can
be trusted, then one final score) and ``basic`` (the four grades and nothing else). A user prompt
is a TOML file with ``template`` (``{query}`` and ``{passage}`` fields), and optionally
``answer_prefix``, ``pattern`` and ``max_new_tokens``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from rerank.errors import RerankError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

GRADES = (0, 1, 2, 3)

_SCALE = """Grade how relevant the passage is to the query on a scale of 0 to 3:
3 = the passage is dedicated to the query and contains the exact answer;
2 = the passage holds some answer to the query, but it is unclear or buried in unrelated text;
1 = the passage is on the query's topic but does not answer it;
0 = the passage has nothing to do with the query."""

UMBRELA_TEMPLATE = _SCALE + """
Give 1 to a passage that is only somewhat on the topic, 2 to one that answers the query partly
or unclearly, and 3 only to one that answers it fully and plainly.

Query: {query}
Passage: {passage}

Work through it in steps, silently:
- what the searcher most likely wants (the intent of the query);
- how well the passage's content matches that intent (M);
- how far the passage can be trusted (T);
- weighing those, one final score (O), an integer from 0 to 3.
Answer only in the form "##final score: N", with no reasoning."""

BASIC_TEMPLATE = _SCALE + """

Query: {query}
Passage: {passage}

Answer with the grade only, one digit from 0 to 3."""


class PromptError(RerankError):
    """A judging prompt that cannot be used: a missing field, an unknown name, a bad pattern."""


@dataclass(frozen=True)
class JudgePrompt:
    """How to ask an LLM for a 0–3 grade and read it back.

    ``pattern`` is a regular expression whose first group is the grade; it must match the whole
    answer (leading and trailing white space aside), so a rambling answer counts as unparseable
    rather than being guessed at."""

    name: str
    template: str
    pattern: str
    answer_prefix: str = ""
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        for field in ("{query}", "{passage}"):
            if field not in self.template:
                raise PromptError(f"judging prompt {self.name!r}: its template has no {field} field")
        try:
            if re.compile(self.pattern).groups < 1:
                raise PromptError(f"judging prompt {self.name!r}: its pattern needs a group for the grade")
        except re.error as exc:
            raise PromptError(f"judging prompt {self.name!r}: bad pattern {self.pattern!r}: {exc}") from exc

    @property
    def digest(self) -> str:
        """A short hash of everything that changes what the LLM is asked (part of the cache key)."""
        text = "\x1f".join((self.template, self.pattern, self.answer_prefix, str(self.max_new_tokens)))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def message(self, query: str, passage: str) -> str:
        """The user message for one pair."""
        return self.template.replace("{query}", query).replace("{passage}", passage)

    def parse(self, answer: str) -> int | None:
        """The grade in ``answer``, or None when the answer is not in the prompt's form."""
        match = re.fullmatch(self.pattern, answer.strip(), flags=re.DOTALL)
        if match is None:
            return None
        try:
            grade = int(match.group(1))
        except ValueError:
            return None
        return grade if grade in GRADES else None


PROMPTS = {
    "umbrela": JudgePrompt("umbrela", UMBRELA_TEMPLATE, pattern=r"##\s*final score:\s*([0-3])\.?",
                           answer_prefix="##final score:", max_new_tokens=6),
    "basic": JudgePrompt("basic", BASIC_TEMPLATE, pattern=r"([0-3])\.?", max_new_tokens=4),
}


def load_prompt(spec: str | JudgePrompt) -> JudgePrompt:
    """A built-in prompt by name (``umbrela``, ``basic``) or a user prompt from a TOML file."""
    if isinstance(spec, JudgePrompt):
        return spec
    if spec in PROMPTS:
        return PROMPTS[spec]
    path = Path(spec)
    if not path.is_file():
        raise PromptError(f"unknown judging prompt {spec!r}: use one of {sorted(PROMPTS)} or a TOML file")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PromptError(f"{path}: not a TOML judging prompt: {exc}") from exc
    if "template" not in table:
        raise PromptError(f"{path}: a judging prompt needs a 'template' with {{query}} and {{passage}}")
    unknown = set(table) - {"name", "template", "pattern", "answer_prefix", "max_new_tokens"}
    if unknown:
        raise PromptError(f"{path}: unknown keys {sorted(unknown)}")
    return JudgePrompt(name=table.get("name", path.stem), template=table["template"],
                       pattern=table.get("pattern", r"([0-3])\.?"), answer_prefix=table.get("answer_prefix", ""),
                       max_new_tokens=int(table.get("max_new_tokens", 8)))
