"""Detokenizer tests against the tokenizer's own full decode (the oracle), with small tokenizers
trained here offline: a byte-level BPE (GPT-2 / SmolLM style) and a SentencePiece-style BPE with
byte fallback and a context-dependent leading space (Llama-2 style decoder)."""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model.detokenizer import REPLACEMENT, IncrementalDetokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there!",
    "Streaming text must never split a character: 你好，世界！こんにちは。",
    "Emoji too: 😀 🎉 👍🏽 and flags 🇫🇷 mixed with words like café and naïve.",
    "STOP words and stop strings: the end. ### Done <|end|> finally.",
] * 3
TEXT = "Hello world! 你好，世界 😀🎉 café — the quick fox. 👍🏽 naïve end."


class CountingDecoder:
    """The interface the detokenizer needs, recording the longest id list it was asked to decode."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.longest = 0

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.longest = max(self.longest, len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def byte_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


@pytest.fixture(scope="module")
def sp_bpe() -> Tokenizer:
    """BPE over "▁"-marked words, unknown characters as <0xNN> byte tokens, first space stripped."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=200, show_progress=False, limit_alphabet=60)
    base.train_from_iterator([t for t in CORPUS if t.isascii()], trainer)
    vocab = base.get_vocab()
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    merges = json.loads(base.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<eos>"])
    return tok


def stream(detok: IncrementalDetokenizer, ids: list[int], sizes: list[int]) -> list[str]:
    chunks, pos = [], 0
    for size in sizes:
        text, stop = detok.add_tokens(ids[pos : pos + size])
        pos += size
        chunks.append(text)
        if stop is not None:
            return chunks
    chunks.append(detok.finish())
    return chunks


def splits(n: int, seed: int = 0) -> list[list[int]]:
    """One by one, all at once, every two-piece split, and random chunkings."""
    out = [[1] * n, [n]] + [[k, n - k] for k in range(1, n)]
    rng = random.Random(seed)
    for _ in range(30):
        sizes, left = [], n
        while left:
            sizes.append(rng.randint(1, min(4, left)))
            left -= sizes[-1]
        out.append(sizes)
    return out


# ---------------------------------------------------------------- plain streaming


def test_tokenization_splits_characters(byte_bpe: Tokenizer) -> None:
    """Precondition of the tests below: some tokens hold only part of a character."""
    ids = byte_bpe.encode(TEXT).ids
    assert any(REPLACEMENT in byte_bpe.decode([i]) for i in ids)


def test_stream_equals_full_decode_byte_bpe(byte_bpe: Tokenizer) -> None:
    ids = byte_bpe.encode(TEXT).ids
    full = byte_bpe.decode(ids)
    assert full == TEXT and REPLACEMENT not in full
    prompt = byte_bpe.encode("Say something: ").ids
    for sizes in splits(len(ids)):
        detok = IncrementalDetokenizer(byte_bpe, prompt)
        chunks = stream(detok, ids, sizes)
        assert "".join(chunks) == full, sizes
        assert detok.output_text == full
        assert not any(REPLACEMENT in c for c in chunks), sizes


def test_prompt_ending_inside_a_character(byte_bpe: Tokenizer) -> None:
    ids = byte_bpe.encode("ab 😀🎉 cd").ids
    cut = next(i for i in range(1, len(ids)) if byte_bpe.decode(ids[:i]).endswith(REPLACEMENT))
    detok = IncrementalDetokenizer(byte_bpe, ids[:cut])
    assert "".join(stream(detok, ids[cut:], [1] * (len(ids) - cut))) == byte_bpe.decode(ids[cut:])


def test_incomplete_tail_released_at_finish(byte_bpe: Tokenizer) -> None:
    ids = byte_bpe.encode("ok 🦀").ids  # not in the corpus: split into byte pieces
    cut = next(i for i in range(1, len(ids)) if byte_bpe.decode(ids[:i]).endswith(REPLACEMENT))
    detok = IncrementalDetokenizer(byte_bpe, [])
    text, _ = detok.add_tokens(ids[:cut])
    assert REPLACEMENT not in text
    assert text + detok.finish() == byte_bpe.decode(ids[:cut])


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(byte_bpe: Tokenizer, skip: bool) -> None:
    eos = byte_bpe.token_to_id("<eos>")
    ids = byte_bpe.encode("Hello 你好").ids + [eos] + byte_bpe.encode(" world").ids
    detok = IncrementalDetokenizer(byte_bpe, [eos], skip_special_tokens=skip)
    assert "".join(stream(detok, ids, [1] * len(ids))) == byte_bpe.decode(ids, skip_special_tokens=skip)


def test_window_stays_small(byte_bpe: Tokenizer) -> None:
    ids = byte_bpe.encode(TEXT * 20).ids
    counting = CountingDecoder(byte_bpe)
    detok = IncrementalDetokenizer(counting, byte_bpe.encode("prompt " * 50).ids)
    assert "".join(stream(detok, ids, [1] * len(ids))) == byte_bpe.decode(ids)
    assert counting.longest <= 10  # context + a character split over a few tokens, not the output


def test_sentencepiece_leading_space_from_context(sp_bpe: Tokenizer) -> None:
    prompt = sp_bpe.encode("The quick brown fox").ids
    out = sp_bpe.encode(" jumps over 你好 the lazy dog 😀!", add_special_tokens=False).ids
    prompt_text = sp_bpe.decode(prompt)
    assert sp_bpe.decode(out[:1]) != sp_bpe.decode(prompt + out[:1])[len(prompt_text) :]  # context matters
    want = sp_bpe.decode(prompt + out)[len(prompt_text) :]
    assert want.startswith(" jumps")
    for sizes in splits(len(out)):
        chunks = stream(IncrementalDetokenizer(sp_bpe, prompt), out, sizes)
        assert "".join(chunks) == want, sizes
        assert not any(REPLACEMENT in c for c in chunks)
    # Without a prompt there is no context: the text is the plain decode.
    assert "".join(stream(IncrementalDetokenizer(sp_bpe, []), out, [1] * len(out))) == sp_bpe.decode(out)


# ---------------------------------------------------------------- stop strings


def run_stops(tok: Tokenizer, text: str, stops: list[str], include: bool, sizes: list[int] | None = None):
    ids = tok.encode(text).ids
    detok = IncrementalDetokenizer(tok, [], stop=stops, include_stop_str_in_output=include)
    chunks, stop = [], None
    pos = 0
    for size in sizes or [1] * len(ids):
        chunk, stop = detok.add_tokens(ids[pos : pos + size])
        pos += size
        chunks.append(chunk)
        if stop is not None:
            break
    if stop is None:
        chunks.append(detok.finish())
    return chunks, stop, detok


def expected(text: str, stops: list[str], include: bool) -> tuple[str, str | None]:
    found = [(text.find(s), len(s), s) for s in stops if s in text]
    if not found:
        return text, None
    i, n, s = min(found)
    return text[: i + n if include else i], s


def test_stop_split_across_tokens(byte_bpe: Tokenizer) -> None:
    ids = byte_bpe.encode(TEXT).ids
    pieces = [byte_bpe.decode(ids[:i]) for i in range(len(ids) + 1)]
    # A stop string that straddles a token boundary, late in the text (multibyte text before it).

    def straddling(i: int) -> str:  # two characters before the boundary after token i, two after
        return pieces[i][-2:] + pieces[i + 1][len(pieces[i]) :][:2]

    boundary = max(i for i in range(1, len(ids)) if straddling(i).isalpha() and len(straddling(i)) == 4)
    stop = straddling(boundary)
    assert len(expected(TEXT, [stop], include=False)[0]) > 20
    assert all(stop not in byte_bpe.decode([t]) for t in ids)
    want, want_stop = expected(TEXT, [stop], include=False)
    for sizes in splits(len(ids))[:20]:
        chunks, got_stop, detok = run_stops(byte_bpe, TEXT, [stop], False, sizes)
        assert (got_stop, "".join(chunks)) == (want_stop, want)
        emitted = ""
        for c in chunks:  # never ahead of the final text: no half-matched stop was ever emitted
            emitted += c
            assert want.startswith(emitted)
        assert detok.output_text == want


def test_multibyte_stop(byte_bpe: Tokenizer) -> None:
    for stop in ["世界", "😀🎉", "— the"]:
        for include in (False, True):
            chunks, got, _ = run_stops(byte_bpe, TEXT, [stop], include)
            assert ("".join(chunks), got) == expected(TEXT, [stop], include)
            assert not any(REPLACEMENT in c for c in chunks)


def test_earliest_stop_wins(byte_bpe: Tokenizer) -> None:
    stops = ["quick fox", "café", "world"]  # listed out of order
    chunks, got, _ = run_stops(byte_bpe, TEXT, stops, False, [len(byte_bpe.encode(TEXT).ids)])
    assert ("".join(chunks), got) == expected(TEXT, stops, False) == ("Hello ", "world")
    chunks, got, _ = run_stops(byte_bpe, TEXT, stops, False)
    assert ("".join(chunks), got) == ("Hello ", "world")


@pytest.mark.parametrize("include", [False, True])
def test_include_stop_str(byte_bpe: Tokenizer, include: bool) -> None:
    for stop in ["fox.", "Hello", "end."]:
        for sizes in ([1] * 100, [3] * 40, [1000]):
            chunks, got, detok = run_stops(byte_bpe, TEXT, [stop], include, sizes)
            assert ("".join(chunks), got) == expected(TEXT, [stop], include)
            assert detok.output_text == "".join(chunks)


def test_unfinished_stop_released_at_finish(byte_bpe: Tokenizer) -> None:
    text = "Hello world. ST"
    ids = byte_bpe.encode(text).ids
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["STOP", "world!"])
    streamed = "".join(detok.add_tokens([t])[0] for t in ids)
    assert text.startswith(streamed) and not streamed.endswith("ST")  # "ST" was held back
    assert streamed + detok.finish() == text
    assert detok.stop_reason is None and detok.output_text == text


def test_after_stop_nothing_more(byte_bpe: Tokenizer) -> None:
    detok = IncrementalDetokenizer(byte_bpe, [], stop=["lo"])
    assert detok.add_tokens(byte_bpe.encode("Hello").ids) == ("Hel", "lo")
    assert detok.add_tokens(byte_bpe.encode(" more").ids) == ("", None)
    assert detok.finish() == "" and detok.output_text == "Hel"
