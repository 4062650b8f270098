"""The tokenizer: a `tokenizers.Tokenizer`, the model's special tokens and its chat template.

`Tokenizer.from_hf_dir` loads a Hugging Face directory (`tokenizer.json` + `tokenizer_config.json`),
used as written; `model.loader.gguf_vocab` builds one from GGUF metadata (`tokenizer.ggml.*`).

Chat templates are rendered in a Jinja sandbox (`model.chat_template`); any template failure
becomes a `ValueError`.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from tokenizers import AddedToken
from tokenizers import Tokenizer as BackendTokenizer

from .chat_template import render_chat_template
from .errors import ModelLoadError

SPIECE_SPACE = "\u2581"  # "▁", SentencePiece's visible space


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


def _decoder_style(backend: BackendTokenizer) -> str:
    """How a vocabulary string maps to bytes: "byte_level", "sentencepiece" or "other"."""
    decoder = backend.decoder
    state = decoder.__getstate__().decode("utf-8", "replace") if decoder is not None else ""
    if '"ByteLevel"' in state:
        return "byte_level"
    if '"ByteFallback"' in state or SPIECE_SPACE in state or '"Metaspace"' in state:
        return "sentencepiece"
    return "other"


_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization_spaces` (for tokenizers configured with it)."""
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


__all__ = ["BYTE_TO_UNICODE", "SPIECE_SPACE", "UNICODE_TO_BYTE", "Tokenizer"]
