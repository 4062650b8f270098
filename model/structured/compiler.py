"""Constraint -> validated llguidance grammar -> a fresh matcher per choice.

`GrammarCompiler` is built once per engine. It turns a StructuredOutputs into llguidance's grammar
text, validates it against the model's tokenizer (an InvalidParamError naming the request field if
it is bad), and keeps the compiled matcher of each distinct constraint in a small LRU cache; every
choice gets a `deep_copy()` of it (cheap) as its own state. Compiling is thread-safe and runs off the
engine thread (`AsyncEngine.submit` awaits it in a worker thread with a timeout); llguidance's own
parser limits bound the work of a hostile grammar while it is built and at each step.

JSON is generated compactly (no free whitespace between tokens): a small model given the freedom of
JSON whitespace tends to spend its tokens on newlines.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import llguidance

from ..errors import InvalidParamError
from .limits import check_limits, check_schema
from .spec import StructuredOutputs

CACHE_SIZE = 256
_JSON_OPTIONS = {"whitespace_flexible": False}
# llguidance's defaults, a little tighter on the one-off work of building a grammar.
_LIMITS = llguidance.LLParserLimits(initial_lexer_fuel=500_000, max_grammar_size=200_000)


class ChoiceGrammar:
    """One choice's matcher: which tokens may come next, advanced by each sampled token."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self.matcher = matcher

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)  # a refused token puts the matcher in its error state

    @property
    def finished(self) -> bool:
        """The grammar is complete and allows nothing but the end (or it failed)."""
        return self.matcher.is_stopped()


class CompiledGrammar:
    def __init__(self, template: llguidance.LLMatcher) -> None:
        self._template = template

    def new_choice(self) -> ChoiceGrammar:
        return ChoiceGrammar(self._template.deep_copy())


class GrammarCompiler:
    def __init__(self, tokenizer_json: Callable[[], str], vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self._tokenizer_json = tokenizer_json  # the `tokenizers` JSON, asked for on first use
        self.vocab_size = vocab_size
        self._eos = list(eos_token_ids)
        self._lltokenizer: llguidance.LLTokenizer | None = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()

    @property
    def lltokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of the vocabulary (built on first use: ~0.2 s)."""
        with self._lock:
            if self._lltokenizer is None:
                self._lltokenizer = llguidance.LLTokenizer(
                    self._tokenizer_json(), n_vocab=self.vocab_size, eos_token=self._eos or None
                )
            return self._lltokenizer

    def compile(self, spec: StructuredOutputs) -> CompiledGrammar:
        """The compiled constraint (cached); InvalidParamError(param=spec.param) if it is over the limits,
        malformed, or not something llguidance can enforce."""
        check_limits(spec)  # first: the cache key of a hostile schema would already be costly
        key = spec.cache_key()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        grammar = grammar_text(spec)
        tokenizer = self.lltokenizer
        error = llguidance.LLMatcher.validate_grammar(grammar, tokenizer, limits=_LIMITS)
        if error:
            raise InvalidParamError(f"{spec.param}: {_first_lines(error)}", spec.param)
        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0, limits=_LIMITS)
        if matcher.is_error():
            raise InvalidParamError(f"{spec.param}: {_first_lines(matcher.get_error())}", spec.param)
        compiled = CompiledGrammar(matcher)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled


def grammar_text(spec: StructuredOutputs) -> str:
    """llguidance's grammar for the constraint (not yet validated)."""
    kind = spec.kind
    try:
        if kind == "json":
            return llguidance.LLMatcher.grammar_from_json_schema(check_schema(spec.json, spec.param), _JSON_OPTIONS)
        if kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, _JSON_OPTIONS)
        if kind == "regex":
            return llguidance.LLMatcher.grammar_from_regex(spec.regex or "")
        if kind == "choice":
            return llguidance.LLMatcher.grammar_from_lark(choice_lark(spec.choice or ()))
        return llguidance.grammar_from("grammar", spec.grammar or "")  # Lark, or GBNF converted to Lark
    except (ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
        raise InvalidParamError(f"{spec.param}: {_first_lines(str(exc))}", spec.param) from None


def choice_lark(choices: Sequence[str]) -> str:
    """A Lark grammar whose language is exactly the given strings (JSON string literals are Lark's)."""
    return "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def _first_lines(message: Any, lines: int = 6, width: int = 160) -> str:
    """The start of llguidance's message, each line cut to `width` (it quotes the client's input)."""
    kept = [line if len(line) <= width else line[:width] + "..." for line in str(message).strip().splitlines()[:lines]]
    return "\n".join(kept)
