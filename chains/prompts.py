"""Prompt files from prompts/, loaded and checked once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from langchain_core.prompts import ChatPromptTemplate, PromptTemplate


class PromptError(ValueError):
    """A prompt file is missing or does not take the variables the chain fills in."""


@dataclass(frozen=True)
class Prompts:
    answer: ChatPromptTemplate
    condense: PromptTemplate
    sufficiency: ChatPromptTemplate


def _read(folder: Path, name: str, variables: set[str]) -> str:
    path = folder / name
    if not path.is_file():
        raise PromptError(f"prompt file {path} is missing")
    text = path.read_text(encoding="utf-8").strip()
    found = set(PromptTemplate.from_template(text).input_variables)
    if found != variables:
        raise PromptError(f"{path} must use exactly the variables {sorted(variables)}, found {sorted(found)}")
    return text


def load_prompts(folder: Path) -> Prompts:
    """Read system.md, answer.md, condense.md and sufficiency.md; refuse files with missing or unknown variables."""
    system = _read(folder, "system.md", set())
    answer = _read(folder, "answer.md", {"context", "question"})
    condense = _read(folder, "condense.md", {"history", "question"})
    sufficiency = _read(folder, "sufficiency.md", {"context", "question"})
    return Prompts(
        answer=ChatPromptTemplate.from_messages([("system", system), ("human", answer)]),
        condense=PromptTemplate.from_template(condense),
        sufficiency=ChatPromptTemplate.from_messages([("system", system), ("human", sufficiency)]),
    )
