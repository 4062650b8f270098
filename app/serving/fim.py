"""Fill-in-the-middle for /v1/completions' `suffix`: prefix and suffix around the model's FIM tokens.

A model whose vocabulary has a complete set of FIM tokens (StarCoder's `<fim_prefix>`, `<fim_suffix>`,
`<fim_middle>`, or Qwen's `<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>`) gets the prompt in PSM
order, as llama.cpp's infill builds it:

    [BOS if the tokenizer adds one] <fim_prefix> prompt <fim_suffix> suffix <fim_middle>

The prompt and the suffix are tokenized without special tokens (BOS comes first, once) and the FIM
tokens are inserted by id. Without FIM tokens `suffix` is a 400 naming it. The vocabulary is read only
through `AsyncEngine.encode` and `engine.tokenizer.convert_ids_to_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

from model import AsyncEngine

from ..errors import bad_request
from .prompts import encode_prompts

# Spellings of (prefix, suffix, middle), tried in this order.
FIM_SPELLINGS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SmolLM (base), DeepSeek-style vocabularies
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder, Qwen3
)


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int
    leading: tuple[int, ...] = ()  # what the tokenizer puts before a text (BOS, usually)


def _token_id(engine: AsyncEngine, token: str) -> int | None:
    """The id of `token` if the vocabulary has it as one whole token, else None."""
    try:
        ids = engine.encode(token, add_special_tokens=False)
    except Exception:  # noqa: BLE001 - a tokenizer that refuses the text has no such token
        return None
    if len(ids) != 1:
        return None
    return ids[0] if engine.tokenizer.convert_ids_to_tokens(ids) == [token] else None


def find_fim_tokens(engine: AsyncEngine) -> FimTokens | None:
    """The model's FIM token ids (the first spelling it has all three of), or None."""
    for spelling in FIM_SPELLINGS:
        ids = [_token_id(engine, t) for t in spelling]
        if all(i is not None for i in ids):
            prefix, suffix, middle = ids
            return FimTokens(prefix, suffix, middle, _leading_special_ids(engine))  # type: ignore[arg-type]
    return None


def _leading_special_ids(engine: AsyncEngine, probe: str = "a") -> tuple[int, ...]:
    """The ids the tokenizer puts before a text when it adds special tokens (BOS, usually; none for most
    code models)."""
    full = engine.encode(probe, add_special_tokens=True)
    plain = engine.encode(probe, add_special_tokens=False)
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return tuple(full[:k])
    return ()


def require_fim(fim: FimTokens | None) -> FimTokens:
    """`fim`, or the 400 naming `suffix` for a model without FIM tokens."""
    if fim is None:
        raise bad_request(
            "'suffix' (fill-in-the-middle) needs a model whose vocabulary has FIM tokens "
            "(<fim_prefix>, <fim_suffix>, <fim_middle> or <|fim_prefix|>, <|fim_suffix|>, <|fim_middle|>); "
            "this model has none",
            "suffix",
        )
    return fim


def fim_prompt(engine: AsyncEngine, fim: FimTokens | None, prompt: str | list[int], suffix: str) -> list[int]:
    """The token ids of a fill-in-the-middle prompt (PSM order); 400 naming `suffix` without FIM tokens.
    A token-id prompt is the prefix's ids as given (no BOS added, as for any token-id prompt). Runs in a
    worker thread."""
    fim = require_fim(fim)
    try:
        if isinstance(prompt, str):
            leading, prefix_ids = list(fim.leading), engine.encode(prompt, add_special_tokens=False)
        else:
            leading, prefix_ids = [], list(prompt)
        suffix_ids = engine.encode(suffix, add_special_tokens=False)
    except Exception as exc:  # noqa: BLE001 - the tokenizer's errors are about the input
        raise bad_request(f"cannot tokenize the prompt or suffix: {exc}", "suffix") from None
    return [*leading, fim.prefix, *prefix_ids, fim.suffix, *suffix_ids, fim.middle]


def encode_fim_prompts(
    engine: AsyncEngine, fim: FimTokens | None, prompts: list[str | list[int]], suffix: str, echo: bool
) -> list[tuple[list[int], str]]:
    """(token ids, text to echo) for each completions prompt around `suffix`; the echo is the prompt."""
    texts = [text for _, text in encode_prompts(engine, [p for p in prompts if not isinstance(p, str)], echo)]
    out = []
    for p in prompts:
        out.append((fim_prompt(engine, fim, p, suffix), p if isinstance(p, str) else texts.pop(0)))
    return out
