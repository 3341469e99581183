"""The sufficiency check: before writing an answer, the LLM says in structured form whether the tickets answer at all.

A reply that is not the expected JSON counts as no verdict (the answer is written, and the metadata says
so); an LLM failure is the same 503/504 as during the answer.
"""

from __future__ import annotations

import json
import re
from typing import Annotated

from langchain_core.language_models import BaseChatModel
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableConfig
from pydantic import BaseModel, StringConstraints, ValidationError

_OBJECT = re.compile(r"\{.*\}", re.S)


class Sufficiency(BaseModel):
    """The model's verdict on the retrieved tickets."""

    answerable: bool
    reason: Annotated[str, StringConstraints(max_length=500, strip_whitespace=True)] = ""


def parse_sufficiency(text: str) -> Sufficiency | None:
    """The verdict in a reply (code fences and chatter around the JSON tolerated), or None."""
    match = _OBJECT.search(text)
    if not match:
        return None
    try:
        return Sufficiency.model_validate(json.loads(match.group(0)))
    except (ValueError, ValidationError):
        return None


async def check_sufficiency(
    llm: BaseChatModel, prompt: ChatPromptTemplate, *, context: str, question: str, config: RunnableConfig
) -> Sufficiency | None:
    """Ask the model whether the context answers the question; None when it gives no usable verdict."""
    messages = prompt.format_messages(context=context, question=question)
    reply = await llm.ainvoke(messages, {**config, "run_name": "sufficiency_check"})  # its own name in the trace
    return parse_sufficiency(str(reply.content))
