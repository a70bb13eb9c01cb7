"""The agents ``tollmesh serve`` exposes when given none: an echo and the seed's summarizer.

>>> Summarize().handle(None, "One. Two. Three. Four.")
'One. Two. Three.'
"""

from __future__ import annotations

from typing import Any

from mesh.calls.agent import Agent


class Echo(Agent):
    """Answers its payload. The payload "boom" makes it fail on purpose (the toll is refunded, nothing settled)."""

    price_usd = "0.001"

    def handle(self, ctx: Any, payload: Any) -> Any:
        if payload == "boom":
            raise RuntimeError("echo fails on 'boom', on purpose")
        return payload


class Summarize(Agent):
    """The first three sentences of a text (the seed's own example, at its price)."""

    price_usd = "0.01"

    def handle(self, ctx: Any, payload: Any) -> Any:
        text = str(payload or "")
        sentences = text.split(". ")
        if len(sentences) <= 3:
            return text
        return ". ".join(sentences[:3]) + "."


DEMO_AGENTS = {"echo": Echo, "summarize": Summarize}
