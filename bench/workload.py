"""The requests of a benchmark: prompts and output lengths, reproducible from a seed.

A prompt is "Write a long story about " followed by N random common words (60 words give about 90
prompt tokens with the default model's chat template). Lengths are fixed (`60`) or drawn uniformly
from a range (`30:120`); the same seed gives the same requests to every server in a comparison.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# Common English words; most are one token in Llama-style BPE vocabularies.
WORDS = """
apple river mountain lantern copper whisper orchard velvet harbor meadow ember glacier canyon falcon
thunder saffron marble quartz willow lagoon prairie cobalt tundra crimson beacon garden window silver
forest castle dragon ocean island market bridge candle shadow summer winter autumn spring morning
evening village letter mirror journey secret golden broken silent hidden ancient gentle bright quiet
storm cloud valley stone tower sailor farmer doctor teacher painter singer hunter baker soldier queen
king child mother father sister brother friend stranger traveler machine engine signal compass map
train station school library kitchen bottle basket ribbon feather blanket pocket coin key door road
""".split()

PROMPT_PREFIX = "Write a long story about "


@dataclass(frozen=True)
class IntRange:
    """A length: fixed (lo == hi) or uniform in [lo, hi]."""

    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str | int) -> "IntRange":
        """'128' -> fixed 128; '64:256' -> uniform in [64, 256]."""
        s = str(text).strip()
        try:
            if ":" in s:
                a, b = s.split(":", 1)
                lo, hi = int(a), int(b)
            else:
                lo = hi = int(s)
        except ValueError:
            raise ValueError(f"expected N or LO:HI (integers), got {text!r}") from None
        if lo < 0 or hi < lo:
            raise ValueError(f"expected 0 <= LO <= HI, got {text!r}")
        return cls(lo, hi)

    def draw(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    max_tokens: int


def make_requests(n: int, prompt_words: IntRange, max_tokens: IntRange, seed: int) -> list[RequestSpec]:
    """`n` requests drawn from `seed` (each sweep level uses its own seed so that prompts differ and a
    prefix cache cannot reuse a whole earlier prompt)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = prompt_words.draw(rng)
        prompt = PROMPT_PREFIX + " ".join(rng.choice(WORDS) for _ in range(words))
        out.append(RequestSpec(prompt=prompt, max_tokens=max(1, max_tokens.draw(rng))))
    return out


def build_payload(
    spec: RequestSpec,
    *,
    endpoint: str,
    model: str,
    temperature: float,
    ignore_eos: bool,
    extra_body: dict | None = None,
) -> dict:
    """The JSON body of one streaming request for `endpoint` ('chat' or 'completions')."""
    body: dict = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": spec.max_tokens,
        "temperature": temperature,
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    elif endpoint == "completions":
        body["prompt"] = spec.prompt
    else:
        raise ValueError(f"unknown endpoint {endpoint!r}")
    if ignore_eos:
        body["ignore_eos"] = True
    if extra_body:
        body.update(extra_body)
    return body


def endpoint_path(endpoint: str) -> str:
    return {"chat": "/chat/completions", "completions": "/completions"}[endpoint]
