"""The engine's TokenLogprobs and finish reasons as the OpenAI APIs spell them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from model import TokenLogprobs

from ..responses import clean_logprob


class LogprobFormatter:
    """Turns the engine's TokenLogprobs into the legacy (completions) and chat shapes."""

    def __init__(self, tokenizer: Any, as_token_ids: bool) -> None:
        self.as_ids = as_token_ids
        self._bytes = lru_cache(maxsize=1 << 16)(lambda tid: list(tokenizer.token_bytes(tid)))

    def _name(self, token_id: int, decoded: str) -> str:
        return f"token_id:{token_id}" if self.as_ids else decoded

    def legacy(self, entries: Sequence[TokenLogprobs], offset: int) -> tuple[dict[str, Any], int]:
        """{tokens, token_logprobs, top_logprobs, text_offset}; returns the next text offset."""
        tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
        for e in entries:
            name = self._name(e.sampled.token_id, e.sampled.decoded)
            lp = clean_logprob(e.sampled.logprob)
            tokens.append(name)
            token_logprobs.append(lp)
            top: dict[str, float] = {}
            for alt in e.top:
                top.setdefault(self._name(alt.token_id, alt.decoded), clean_logprob(alt.logprob))
            top.setdefault(name, lp)
            top_logprobs.append(top)
            offsets.append(offset)
            offset += len(e.sampled.decoded)
        return (
            {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets},
            offset,
        )

    def chat(self, entries: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
        """logprobs.content[]: {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}."""
        content = []
        for e in entries:
            s = e.sampled
            content.append(
                {
                    "token": self._name(s.token_id, s.decoded),
                    "logprob": clean_logprob(s.logprob),
                    "bytes": self._bytes(s.token_id),
                    "top_logprobs": [
                        {
                            "token": self._name(a.token_id, a.decoded),
                            "logprob": clean_logprob(a.logprob),
                            "bytes": self._bytes(a.token_id),
                        }
                        for a in e.top
                    ],
                }
            )
        return content


def finish_reason(reason: str | None) -> str | None:
    """The engine's reason as OpenAI spells it ("abort" is internal and never reaches a client)."""
    if reason is None or reason in ("stop", "length"):
        return reason
    return "stop"
