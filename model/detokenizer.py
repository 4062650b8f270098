"""Incremental detokenization and stop strings for one output sequence.

Decoding: the standard sliding window. Each step decodes only the tokens from `prefix` on, and
the text of the tokens in [prefix, read) is subtracted from it, so the cost per token does not grow
with the output and tokenizers whose leading space depends on context (SentencePiece) come out
right. A window whose text ends in U+FFFD (an incomplete UTF-8 sequence) is held until more tokens
complete it. The first output tokens get a few prompt tokens as context, like vLLM, so a completion
keeps its leading space ("The capital is" -> " Paris"); for byte-level BPE the emitted text equals
`decode(output_ids)` exactly.

Stop strings: the earliest match (by start position, then the shortest) ends the text; the stop
string is dropped unless `include_stop_str_in_output`. Until a stop string can no longer match,
a tail of the text that is a prefix of some stop string is held back.
"""

from __future__ import annotations

from typing import Protocol

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # prompt tokens decoded as left context of the first output token
_TRIM_AT = 64  # drop consumed ids from the window list once this many have piled up


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Decoder,
        prompt_token_ids: list[int],
        skip_special_tokens: bool = True,
        stop: list[str] | None = None,
        include_stop_str_in_output: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        context = list(prompt_token_ids[-CONTEXT_TOKENS:])
        if context and self._decode(context).endswith(REPLACEMENT):
            context = []  # the prompt ends inside a character: no clean text to subtract
        self._ids = context  # the window: context, then output ids not yet consumed
        self._prefix = 0  # ids[prefix:read] were decoded last step; their text is subtracted
        self._read = len(context)  # ids[read:] are not turned into text yet
        self._text = ""  # output text so far (complete characters), stops not applied yet
        self._emitted = 0  # how much of _text was handed out
        self._stops = [s for s in (stop or []) if s]
        self._max_stop = max((len(s) for s in self._stops), default=0)
        self._stop_starts = {s[0] for s in self._stops}
        self._include_stop = include_stop_str_in_output
        self.stop_reason: str | None = None  # the stop string that ended the text

    @property
    def output_text(self) -> str:
        """All text emitted so far."""
        return self._text[: self._emitted]

    @property
    def stopped(self) -> bool:
        return self.stop_reason is not None

    def add_tokens(self, new_ids: list[int]) -> tuple[str, str | None]:
        """Feed new output ids; return (newly emittable text, the stop string matched or None).

        After a stop string matched, further calls return ("", None)."""
        if self.stopped:
            return "", None
        self._ids.extend(new_ids)
        before = len(self._text)
        self._text += self._decode_window(flush=False)
        return self._release(before, final=False)

    def finish(self) -> str:
        """On a finish without a stop string (EOS, length): release all held-back text.

        An incomplete UTF-8 tail becomes whatever the tokenizer decodes it to."""
        if self.stopped:
            return ""
        before = len(self._text)
        self._text += self._decode_window(flush=True)
        return self._release(before, final=True)[0]

    # ------------------------------------------------------------------ decoding

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _decode_window(self, flush: bool) -> str:
        """Text of the ids not consumed yet ("" while it ends in an incomplete character)."""
        if self._read == len(self._ids):
            return ""
        known = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if full.endswith(REPLACEMENT) and not flush:
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        if self._prefix >= _TRIM_AT:
            del self._ids[: self._prefix]
            self._read -= self._prefix
            self._prefix = 0
        return full[len(known) :]

    # ------------------------------------------------------------------ stop strings

    def _release(self, before: int, final: bool) -> tuple[str, str | None]:
        """Emit what is safe now; `before`: the text length before this step's new text."""
        match = self._find_stop(before)
        if match is not None:
            start, stop = match
            end = start + len(stop) if self._include_stop else start
            self._text = self._text[:end]
            self.stop_reason = stop
            return self._emit(end), stop
        hold = 0 if final or self._include_stop else self._partial_stop_len()
        return self._emit(len(self._text) - hold), None

    def _emit(self, end: int) -> str:
        assert end >= self._emitted, (end, self._emitted)
        chunk = self._text[self._emitted : end]
        self._emitted = end
        return chunk

    def _find_stop(self, before: int) -> tuple[int, str] | None:
        """The earliest stop string that ends in the new text (ties: the shortest)."""
        if not self._stops:
            return None
        lo = max(0, before - self._max_stop + 1)  # a new match must end after `before`
        best: tuple[int, str] | None = None
        for stop in self._stops:
            i = self._text.find(stop, lo)
            if i >= 0 and (best is None or (i, len(stop)) < (best[0], len(best[1]))):
                best = (i, stop)
        return best

    def _partial_stop_len(self) -> int:
        """Length of the longest unemitted tail that is a proper prefix of some stop string."""
        text = self._text
        lo = max(self._emitted, len(text) - self._max_stop + 1)
        for i in range(lo, len(text)):
            if text[i] in self._stop_starts:
                tail = text[i:]
                if any(stop.startswith(tail) for stop in self._stops):
                    return len(text) - i
        return 0
