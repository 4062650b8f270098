"""The tokenizer a GGUF file describes, rebuilt from its `tokenizer.ggml.*` metadata.

We build the same `tokenizers` pipeline that `transformers`' GGUF loader builds: byte-level BPE
for `gpt2` vocabularies, SentencePiece-style BPE with byte fallback for `llama` vocabularies,
then wrap it in a plain `Tokenizer`.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from ..errors import ModelLoadError
from ..tokenizer import BYTE_TO_UNICODE, SPIECE_SPACE, Tokenizer
from .gguf_reader import read_header

logger = logging.getLogger(__name__)

# llama.cpp token types (tokenizer.ggml.token_type), same numbering as SentencePiece.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def _byte_level_spelling(text: str) -> str:
    """`text` written in the byte-level alphabet (its UTF-8 bytes, one character each)."""
    return "".join(BYTE_TO_UNICODE[b] for b in text.encode("utf-8"))


# --------------------------------------------------------------------------- pre-tokenizer splits
# The regexes that split text into words before BPE, keyed by GGUF `tokenizer.ggml.pre`.

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2: the Llama 3 split with single digits.
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

_SPLIT_BY_PRE = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "dbrx", "falcon3", "pixtral"), _LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT),
}
# Vocabularies trained with every digit split off first (StarCoder family, SmolLM), then GPT-2's regex.
_DIGITS_FIRST_PRE = {"smollm", "starcoder", "refact", "codeshell"}


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    split = _SPLIT_BY_PRE.get(pre or "")
    if split is not None:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    if pre in _DIGITS_FIRST_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre not in (None, "default", "gpt2", "gpt-2"):
        logger.warning("unknown GGUF pre-tokenizer %r; using GPT-2's split", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


# --------------------------------------------------------------------------- the Tokenizer


def tokenizer_from_gguf_fields(fields: Mapping[str, Any], source: str = "GGUF file") -> Tokenizer:
    """Build the tokenizer a GGUF describes from its metadata (key -> plain Python value;
    arrays as lists). `source` names the file in error messages."""
    tokens = fields.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ModelLoadError(f"{source}: no vocabulary (tokenizer.ggml.tokens)")
    types = fields.get("tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    if not isinstance(types, list) or len(types) != len(tokens):
        raise ModelLoadError(f"{source}: tokenizer.ggml.token_type does not give one type per token")
    ids = {key: _gguf_token_id(fields, key, len(tokens), source) for key in ("bos", "eos", "unknown", "padding")}
    kind = fields.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "llama"):
        raise ModelLoadError(f"{source}: unsupported tokenizer model {kind!r} (supported: gpt2, llama)")
    try:
        if kind == "gpt2":
            backend, known = _gguf_byte_level_bpe(fields, tokens)
        else:
            unk = tokens[ids["unknown"]] if ids["unknown"] is not None else None
            backend, known = _gguf_sentencepiece_bpe(fields, tokens, unk), set(tokens)
    except Exception as exc:  # ours, or tokenizers' on inconsistent vocab/merges
        raise ModelLoadError(f"{source}: cannot build the tokenizer: {exc}") from None

    _add_gguf_added_tokens(backend, tokens, types, known)
    name = {key: (tokens[i] if i is not None else None) for key, i in ids.items()}
    add_bos = bool(fields.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    add_eos = bool(fields.get("tokenizer.ggml.add_eos_token", False))
    _set_post_processor(backend, name["bos"], name["eos"], add_bos, add_eos)
    template = fields.get("tokenizer.chat_template")
    return Tokenizer(
        backend,
        bos_token=name["bos"],
        eos_token=name["eos"],
        unk_token=name["unknown"],
        pad_token=name["padding"],
        chat_template=template if isinstance(template, str) and template else None,
    )


def tokenizer_from_gguf_file(path: str) -> Tokenizer:
    """The tokenizer of a GGUF file (reads only its metadata)."""
    return tokenizer_from_gguf_fields(read_header(path).fields, source=path)


# --------------------------------------------------------------------------- GGUF helpers


def _gguf_token_id(fields: Mapping[str, Any], key: str, n_tokens: int, source: str) -> int | None:
    value = fields.get(f"tokenizer.ggml.{key}_token_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n_tokens:
        raise ModelLoadError(
            f"{source}: tokenizer.ggml.{key}_token_id={value!r} is not a token id (vocabulary of {n_tokens})"
        )
    return value


def _gguf_merges(fields: Mapping[str, Any]) -> list[tuple[str, str]] | None:
    merges = fields.get("tokenizer.ggml.merges")
    if merges is None:
        return None
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ") if isinstance(merge, str) else ("", "", "")
        if not sep:
            raise ValueError(f"malformed merge {merge!r} in tokenizer.ggml.merges")
        pairs.append((left, right))
    return pairs


def _gguf_byte_level_bpe(fields: Mapping[str, Any], tokens: list[str]) -> tuple[BackendTokenizer, set[str]]:
    """Byte-level BPE; tokens not written in the byte alphabet (raw added tokens) are respelled."""
    alphabet = set(BYTE_TO_UNICODE.values())
    vocab = {(t if set(t) <= alphabet else _byte_level_spelling(t)): i for i, t in enumerate(tokens)}
    backend = BackendTokenizer(
        models.BPE(
            vocab=vocab,
            merges=_gguf_merges(fields) or [],
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    backend.pre_tokenizer = _byte_level_pre_tokenizer(fields.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    # Only tokens spelled in the byte alphabet can be added tokens (others are llama.cpp mislabels).
    return backend, {t for t in tokens if set(t) <= alphabet}


def _gguf_sentencepiece_bpe(fields: Mapping[str, Any], tokens: list[str], unk: str | None) -> BackendTokenizer:
    """SentencePiece BPE: ▁ for spaces, <0xXX> byte fallback, merges from the file or the scores."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = _gguf_merges(fields)
    if merges is None:
        scores = fields.get("tokenizer.ggml.scores")
        if not isinstance(scores, list) or len(scores) != len(tokens):
            raise ValueError("a llama vocabulary needs tokenizer.ggml.scores (one per token) or merges")
        merges = merges_from_scores(tokens, scores)
    backend = BackendTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    prefix = bool(fields.get("tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPIECE_SPACE, prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return backend


def merges_from_scores(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two vocabulary
    pieces, ranked by the merged token's score (best first), then longer left/right piece first."""
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for i, (token, score) in enumerate(zip(tokens, scores)):
        for k in range(1, len(token)):
            left, right = token[:k], token[k:]
            if left in index and right in index:
                ranked.append((-score, -len(left), -len(right), i, index[left], index[right], left, right))
    ranked.sort(key=lambda r: r[:6])
    return [(r[6], r[7]) for r in ranked]


def _add_gguf_added_tokens(backend: BackendTokenizer, tokens: list[str], types: list[int], known: set[str]) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens, so that
    both are matched whole in text (as llama.cpp and transformers do)."""
    control = [
        AddedToken(t, special=True, normalized=False)
        for t, kind in zip(tokens, types)
        if kind == TOKEN_CONTROL and t in known
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, kind in zip(tokens, types)
        if kind == TOKEN_USER_DEFINED and t in known
    ]
    if control:
        backend.add_special_tokens(control)
    if user:
        backend.add_tokens(user)


def _set_post_processor(
    backend: BackendTokenizer, bos: str | None, eos: str | None, add_bos: bool, add_eos: bool
) -> None:
    """BOS/EOS around each encoded text, as `transformers` builds it from add_bos/add_eos_token."""
    bos_id = backend.token_to_id(bos) if (bos is not None and add_bos) else None
    eos_id = backend.token_to_id(eos) if (eos is not None and add_eos) else None
    pre = f"{bos}:0 " if bos_id is not None else ""
    post = f" {eos}:0" if eos_id is not None else ""
    pair_pre = f" {bos}:1" if bos_id is not None else ""
    pair_post = f" {eos}:1" if eos_id is not None else ""
    specials = [(t, i) for t, i in ((bos, bos_id), (eos, eos_id)) if i is not None]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{pre}$A:0{post}", pair=f"{pre}$A:0{post}{pair_pre} $B:1{pair_post}", special_tokens=specials
    )


__all__ = ["merges_from_scores", "tokenizer_from_gguf_fields", "tokenizer_from_gguf_file"]
