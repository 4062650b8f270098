"""The tokenizer: a `tokenizers.Tokenizer`, the model's special tokens and its chat template.

Two sources:
- a Hugging Face directory (`tokenizer.json` + `tokenizer_config.json`), used as written;
- GGUF metadata (`tokenizer.ggml.*`), from which we rebuild the same `tokenizers` pipeline that
  `transformers`' GGUF loader builds: byte-level BPE for `gpt2` vocabularies, SentencePiece-style
  BPE with byte fallback for `llama` vocabularies.

Chat templates are rendered in a Jinja sandbox; any template failure becomes a `ValueError`.
"""
from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer

from .loader.common import ModelLoadError

logger = logging.getLogger(__name__)

SPIECE_SPACE = "\u2581"  # "▁", SentencePiece's visible space

# llama.cpp token types (tokenizer.ggml.token_type), same numbering as SentencePiece.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


# --------------------------------------------------------------------------- byte-level alphabet


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table used by byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) are shifted
    to code points 256 and up, in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


BYTE_TO_UNICODE = _byte_to_unicode()
UNICODE_TO_BYTE = {c: b for b, c in BYTE_TO_UNICODE.items()}


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


class Tokenizer:
    """A `tokenizers.Tokenizer` plus special tokens and the chat template; the engine's only tokenizer."""

    def __init__(
        self,
        backend: BackendTokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        unk_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.bos_token, self.bos_token_id = self._known(bos_token)
        self.eos_token, self.eos_token_id = self._known(eos_token)
        self.unk_token, self.unk_token_id = self._known(unk_token)
        self.pad_token, self.pad_token_id = self._known(pad_token)
        self.eos_token_ids: list[int] = [] if self.eos_token_id is None else [self.eos_token_id]

        self._register_special(t for t in (bos_token, eos_token, unk_token, pad_token) if t is not None)
        added = backend.get_added_tokens_decoder()
        self._added_ids = set(added)
        named = (self.bos_token_id, self.eos_token_id, self.unk_token_id, self.pad_token_id)
        special = {i for i, t in added.items() if t.special}
        self.all_special_ids: set[int] = special | {i for i in named if i is not None}
        self.vocab_size: int = max(backend.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        self._style = _decoder_style(backend)

    # ----------------------------------------------------------------- construction helpers

    def _known(self, token: str | None) -> tuple[str | None, int | None]:
        """(token, id) if the vocabulary has the token, else (None, None)."""
        if token is None:
            return None, None
        token_id = self.backend.token_to_id(token)
        return (token, token_id) if token_id is not None else (None, None)

    def _register_special(self, tokens: Iterable[str]) -> None:
        """Mark bos/eos/unk/pad as special added tokens (so they are matched whole and skippable)."""
        current = {t.content for t in self.backend.get_added_tokens_decoder().values()}
        new = [
            AddedToken(t, special=True, normalized=False)
            for t in dict.fromkeys(tokens)
            if t not in current and self.backend.token_to_id(t) is not None
        ]
        if new:
            self.backend.add_special_tokens(new)

    @classmethod
    def from_hf_dir(cls, path: str) -> "Tokenizer":
        """Load `tokenizer.json` (required, used as written), `tokenizer_config.json`,
        `special_tokens_map.json` and a chat template (`chat_template.jinja`, `chat_template.json`
        or the config's field)."""
        tok_file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_file):
            raise ModelLoadError(f"{tok_file}: missing; kvserve needs a fast tokenizer (tokenizer.json)")
        try:
            backend = BackendTokenizer.from_file(tok_file)
        except Exception as exc:  # tokenizers raises plain Exception for bad JSON/content
            raise ModelLoadError(f"{tok_file}: not a valid tokenizers file: {exc}") from None
        config = _read_json(os.path.join(path, "tokenizer_config.json"))
        special_map = _read_json(os.path.join(path, "special_tokens_map.json"))

        def special(name: str) -> str | None:
            return _token_content(config.get(name)) or _token_content(special_map.get(name))

        # BOS/EOS come from tokenizer.json's post-processor; like transformers (v5) we ignore the
        # config's add_bos_token/add_eos_token when tokenizer.json exists.
        return cls(
            backend,
            bos_token=special("bos_token"),
            eos_token=special("eos_token"),
            unk_token=special("unk_token"),
            pad_token=special("pad_token"),
            chat_template=_hf_chat_template(path, config),
            clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
        )

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any], source: str = "GGUF file") -> "Tokenizer":
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
        return cls(
            backend,
            bos_token=name["bos"],
            eos_token=name["eos"],
            unk_token=name["unknown"],
            pad_token=name["padding"],
            chat_template=template if isinstance(template, str) and template else None,
        )

    @classmethod
    def from_gguf_file(cls, path: str) -> "Tokenizer":
        """The tokenizer of a GGUF file (reads only its metadata)."""
        from .loader.gguf import read_header  # late: the loader imports this module

        return cls.from_gguf_fields(read_header(path).fields, source=path)

    # ----------------------------------------------------------------- encode / decode

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; special-token text in it maps to the special token. BOS/EOS are
        added only when the model's tokenizer config says so (and `add_special_tokens`)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self.clean_up_tokenization_spaces else text

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Vocabulary strings of `ids` ("" for an id the tokenizer does not know)."""
        return [self.backend.id_to_token(i) or "" for i in ids]

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes `token_id` stands for (may be part of a character); b"" if unknown."""
        token = self.backend.id_to_token(token_id)
        if token is None:
            return b""
        if token_id in self._added_ids:
            return token.encode("utf-8")
        if self._style == "byte_level":
            return bytes(UNICODE_TO_BYTE[c] if c in UNICODE_TO_BYTE else ord(c) for c in token)
        if self._style == "sentencepiece":
            match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token)
            return bytes([int(match.group(1), 16)]) if match else token.replace(SPIECE_SPACE, " ").encode("utf-8")
        return self.backend.decode([token_id], skip_special_tokens=False).encode("utf-8")

    # ----------------------------------------------------------------- chat template

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        **extra: Any,
    ) -> str:
        """Render `messages` with `chat_template` (or the model's) as `transformers` does.
        Raises ValueError when there is no template or the template fails or misbehaves."""
        template = chat_template or self.chat_template
        if not template:
            raise ValueError(
                "this model has no chat template; pass one (--chat-template) or use /v1/completions with a plain prompt"
            )
        context: dict[str, Any] = {
            name: value
            for name, value in (
                ("bos_token", self.bos_token),
                ("eos_token", self.eos_token),
                ("unk_token", self.unk_token),
                ("pad_token", self.pad_token),
            )
            if value is not None
        }
        context.update(messages=messages, add_generation_prompt=add_generation_prompt, **extra)
        return render_chat_template(template, context)


# --------------------------------------------------------------------------- HF directory helpers


def _read_json(path: str) -> dict[str, Any]:
    """A JSON object from `path`, {} if the file is absent; ModelLoadError if it is malformed."""
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return data


def _token_content(value: Any) -> str | None:
    """A special token as written in tokenizer_config: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _hf_chat_template(path: str, config: Mapping[str, Any]) -> str | None:
    jinja_file = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        try:
            with open(jinja_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{jinja_file}: cannot read: {exc}") from None
    template = _read_json(os.path.join(path, "chat_template.json")).get("chat_template")
    if template is None:
        template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


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


def _decoder_style(backend: BackendTokenizer) -> str:
    """How a vocabulary string maps to bytes: "byte_level", "sentencepiece" or "other"."""
    decoder = backend.decoder
    state = decoder.__getstate__().decode("utf-8", "replace") if decoder is not None else ""
    if '"ByteLevel"' in state:
        return "byte_level"
    if '"ByteFallback"' in state or SPIECE_SPACE in state or '"Metaspace"' in state:
        return "sentencepiece"
    return "other"


_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization_spaces` (for tokenizers configured with it)."""
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


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


# --------------------------------------------------------------------------- chat template sandbox

_MAX_SEQUENCE_REPEAT = 1 << 20  # longest str/list a template may build with `*`
_MAX_EXPONENT = 1024


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (used by some templates to mark assistant text):
    rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """Immutable sandbox that fails loudly on any unsafe attribute (the stock one returns an
    Undefined that only fails when used) and refuses giant `*` / `**` results (memory bombs)."""

    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > _MAX_SEQUENCE_REPEAT:
                        raise SecurityError("the template builds a value that is too large")
        if operator == "**" and isinstance(right, int) and abs(right) > _MAX_EXPONENT:
            raise SecurityError("the template computes a power that is too large")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    # Like transformers: no HTML escaping, optional formatting arguments.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment() -> _ChatSandbox:
    env = _ChatSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    return _environment().from_string(template)


def render_chat_template(template: str, context: Mapping[str, Any]) -> str:
    """Render a chat template in the sandbox; every failure is a ValueError with a clear message."""
    try:
        return _compile(template).render(**context)
    except SecurityError as exc:
        raise ValueError(f"chat template refused: it tried an unsafe operation ({exc})") from None
    except TemplateError as exc:  # syntax errors and raise_exception(...) messages
        raise ValueError(f"chat template error: {exc}") from None
    except Exception as exc:  # a template bug (TypeError, KeyError, ...) is the template's fault
        raise ValueError(f"chat template failed: {type(exc).__name__}: {exc}") from None
