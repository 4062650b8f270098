"""model.tokenizer against transformers: GGUF vocabularies (byte-level and SentencePiece), HF
directories, chat templates and the template sandbox."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from helpers_tokenizer import (
    TINY_BOS_ID,
    TINY_CHAT_TEMPLATE,
    TINY_EOS_ID,
    gpt2_vocab_from_tokenizer_json,
    tiny_sentencepiece,
    write_tiny_gguf,
    write_tiny_tokenizer,
)

from model.chat_template import render_chat_template
from model.errors import ModelLoadError
from model.loader.gguf import default_model_path
from model.loader.gguf_reader import read_header
from model.loader.gguf_vocab import merges_from_scores, tokenizer_from_gguf_fields, tokenizer_from_gguf_file
from model.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world",
    " Hello, World! How's it going? I'm fine, WE'LL see.",
    "h\u00e9llo w\u00f6rld \u2014 na\u00efve caf\u00e9",
    "\U0001f600 \U0001f680\U0001f44d\U0001f3fd emoji",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u4e2d\u6587",
    "12345 + 67.890 = 3.14159e10",
    "  leading and   multiple    spaces  ",
    "line1\nline2\r\n\n\ttabbed\t\t",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|> in the middle <|im_end|>x",
    "def f(x):\n    return x ** 2  # code",
    "nbsp\u00a0zero\u200bwidth",
    "",
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And caf\u00e9 \U0001f600?"},
    ],
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def smol_path() -> str:
    return default_model_path()  # `make install` installs it: a missing model must fail, not skip


@pytest.fixture(scope="module")
def smol(smol_path: str) -> Tokenizer:
    return tokenizer_from_gguf_file(smol_path)


@pytest.fixture(scope="module")
def smol_hf(smol_path: str):
    folder, name = os.path.split(smol_path)
    return transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


def _tiny_llama_state(vocab_size: int) -> tuple[dict, dict]:
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).state_dict(), cfg.to_dict()


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    """A tiny llama GGUF with a SentencePiece BPE vocabulary (byte fallback, scores, no merges)."""
    pieces, scores, types, sp = tiny_sentencepiece()
    folder = tmp_path_factory.mktemp("spm")
    state, cfg = _tiny_llama_state(len(pieces))
    vocab = {
        "model": "llama",
        "tokens": pieces,
        "scores": scores,
        "types": types,
        "bos_id": 1,
        "eos_id": 2,
        "unk_id": 0,
        "chat_template": TINY_CHAT_TEMPLATE,
    }
    write_tiny_gguf(str(folder / "spm.gguf"), state, cfg, vocab)
    ours = tokenizer_from_gguf_fields(read_header(str(folder / "spm.gguf")).fields, "spm.gguf")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder), gguf_file="spm.gguf")
    return ours, hf, sp


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("tiny_tok"))
    write_tiny_tokenizer(folder)
    return folder


# --------------------------------------------------------------------------- byte-level GGUF (SmolLM2)


@pytest.mark.parametrize("text", TEXTS)
def test_smollm_gguf_encode_decode_matches_transformers(smol, smol_hf, text):
    ids = smol.encode(text)
    assert ids == smol_hf.encode(text)
    assert smol.convert_ids_to_tokens(ids) == smol_hf.convert_ids_to_tokens(ids)
    for skip in (True, False):
        assert smol.decode(ids, skip_special_tokens=skip) == smol_hf.decode(ids, skip_special_tokens=skip)
    assert smol.decode(ids, skip_special_tokens=False) == text  # byte-level BPE is lossless


def test_smollm_gguf_special_tokens(smol, smol_hf):
    assert smol.vocab_size == len(smol_hf) == 49152
    assert (smol.bos_token_id, smol.eos_token_id) == (smol_hf.bos_token_id, smol_hf.eos_token_id) == (1, 2)
    assert smol.eos_token_ids == [2]
    assert set(smol_hf.all_special_ids) <= smol.all_special_ids  # ours: every control token too
    assert smol.all_special_ids == set(range(17))
    assert smol.encode("hi") == smol.encode("hi", add_special_tokens=False)  # the file says no BOS


def test_smollm_digits_are_split_like_llama_cpp(smol):
    """`tokenizer.ggml.pre = smollm`: every numeric character is its own word (llama.cpp's split and
    SmolLM2's own tokenizer.json). transformers' GGUF path skips this split, so text with non-ASCII
    numerals (' \u00bd') can tokenize differently there; ASCII digits have no merges, so they agree."""
    ids = smol.encode(" \u00bd \u00b2 12")
    pieces = [smol.decode([i]) for i in ids]
    assert pieces == [" ", "\u00bd", " ", "\u00b2", " ", "1", "2"]


def test_smollm_token_bytes(smol):
    for text in TEXTS[:8]:
        ids = smol.encode(text)
        assert b"".join(smol.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert smol.token_bytes(1) == b"<|im_start|>"
    assert smol.token_bytes(10**9) == b""
    # an emoji split over several tokens: each token holds part of its UTF-8 bytes
    assert len(smol.encode("\U0001f44d\U0001f3fd")) > 1


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm_chat_template_matches_transformers(smol, smol_hf, conversation, add_generation_prompt):
    ours = smol.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt)
    theirs = smol_hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours == theirs
    assert ours.startswith("<|im_start|>system\n")


# --------------------------------------------------------------------------- byte-level GGUF, other splits


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "default"])
def test_byte_level_gguf_pre_tokenizers_match_transformers(tmp_path, tiny_dir, pre):
    vocab = gpt2_vocab_from_tokenizer_json(os.path.join(tiny_dir, "tokenizer.json"))
    vocab |= {"pre": pre, "bos_id": TINY_BOS_ID, "eos_id": TINY_EOS_ID, "add_bos": False}
    state, cfg = _tiny_llama_state(300)
    write_tiny_gguf(str(tmp_path / "bpe.gguf"), state, cfg, vocab)
    ours = tokenizer_from_gguf_fields(read_header(str(tmp_path / "bpe.gguf")).fields)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="bpe.gguf")
    # (transformers' GPT2Tokenizer adds its default unk "<|endoftext|>" as a new token; skip that text)
    for text in [t for t in TEXTS if "<|endoftext|>" not in t] + ["I'VE 1234567 don't\n\n\n  x", "a\r\n\r\nb   \n c"]:
        assert ours.encode(text) == hf.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=False) == text


# --------------------------------------------------------------------------- SentencePiece GGUF


SPM_TEXTS = [
    "Hello world",
    " Hello  world",
    "h\u00e9llo \U0001f600 \u65e5\u672c\u8a9e \u00fcber",
    "<tool> x</s>",
    "12345 3.14",
    "\n\nfoo\tbar  ",
    "\u0416\u0416 unseen chars \u2603",
    "",
]


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_sentencepiece_gguf_matches_transformers(spm_gguf, text):
    ours, hf, _ = spm_gguf
    ids = ours.encode(text)
    assert ids == hf.encode(text)
    assert ids[:1] == [1]  # llama vocabularies add BOS by default
    assert ours.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False)
    for skip in (True, False):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("text", ["Hello world", "h\u00e9llo \U0001f600 \u65e5\u672c\u8a9e \u00fcber", "12345 3.14"])
def test_sentencepiece_gguf_matches_sentencepiece(spm_gguf, text):
    ours, _, sp = spm_gguf
    assert ours.encode(text, add_special_tokens=False) == sp.encode(text)


def test_sentencepiece_token_bytes(spm_gguf):
    ours, _, _ = spm_gguf
    text = "Hello w\u00f6rld \u2603"  # the snowman is not in the vocabulary: byte fallback
    ids = ours.encode(text, add_special_tokens=False)
    assert b"".join(ours.token_bytes(i) for i in ids) == b" " + text.encode("utf-8")  # SentencePiece's prefix space
    assert ours.token_bytes(ours.backend.token_to_id("<0x0A>")) == b"\n"
    assert ours.bos_token_id == 1 and ours.eos_token_ids == [2] and {0, 1, 2} <= ours.all_special_ids


def test_merges_from_scores_ranks_by_score():
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -1.0, -2.0, -0.5]
    assert merges_from_scores(tokens, scores) == [("ab", "c"), ("a", "bc"), ("a", "b"), ("b", "c")]


def test_gguf_tokenizer_errors():
    with pytest.raises(ModelLoadError, match="x.gguf: no vocabulary"):
        tokenizer_from_gguf_fields({}, "x.gguf")
    with pytest.raises(ModelLoadError, match="unsupported tokenizer model 'bert'"):
        tokenizer_from_gguf_fields({"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.model": "bert"}, "x.gguf")
    with pytest.raises(ModelLoadError, match="eos_token_id=7 is not a token id"):
        tokenizer_from_gguf_fields(
            {"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.eos_token_id": 7}, "x.gguf"
        )
    with pytest.raises(ModelLoadError, match="x.gguf: cannot build the tokenizer"):
        fields = {"tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.merges": ["a z"]}
        tokenizer_from_gguf_fields(fields, "x.gguf")


# --------------------------------------------------------------------------- HF directory


def test_hf_dir_matches_transformers(tiny_dir):
    ours = Tokenizer.from_hf_dir(tiny_dir)
    hf = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    assert ours.vocab_size == len(hf) <= 300
    assert (ours.bos_token_id, ours.eos_token_id) == (hf.bos_token_id, hf.eos_token_id) == (TINY_BOS_ID, TINY_EOS_ID)
    assert ours.eos_token_ids == [TINY_EOS_ID]
    assert ours.all_special_ids == set(hf.all_special_ids)
    for text in TEXTS + ["<s>hello</s>"]:
        for special in (True, False):
            assert ours.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special)
        ids = ours.encode(text)
        assert ids[0] == TINY_BOS_ID
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    for conversation in CONVERSATIONS:
        for gen in (True, False):
            expected = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(conversation, add_generation_prompt=gen) == expected


def test_hf_dir_without_add_bos_keeps_tokenizer_json_post_processor(tmp_path):
    write_tiny_tokenizer(str(tmp_path), add_bos_token=False)
    ours = Tokenizer.from_hf_dir(str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.encode("Hello") == hf.encode("Hello")
    assert ours.encode("Hello")[0] != TINY_BOS_ID


def test_hf_dir_chat_template_sources(tmp_path):
    write_tiny_tokenizer(str(tmp_path))
    config_path = tmp_path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = [{"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]
    config_path.write_text(json.dumps(config))
    assert Tokenizer.from_hf_dir(str(tmp_path)).chat_template == "DEFAULT"
    (tmp_path / "chat_template.jinja").write_text("FROM JINJA FILE")
    assert Tokenizer.from_hf_dir(str(tmp_path)).chat_template == "FROM JINJA FILE"


def test_hf_dir_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="tokenizer.json: missing"):
        Tokenizer.from_hf_dir(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="tokenizer.json: not a valid tokenizers file"):
        Tokenizer.from_hf_dir(str(tmp_path))
    write_tiny_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(ModelLoadError, match="tokenizer_config.json: cannot read JSON"):
        Tokenizer.from_hf_dir(str(tmp_path))


# --------------------------------------------------------------------------- chat templates and the sandbox


def test_no_chat_template_is_a_value_error(tiny_dir):
    tok = Tokenizer.from_hf_dir(tiny_dir)
    tok.chat_template = None
    with pytest.raises(ValueError, match="this model has no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tok.apply_chat_template([], chat_template="{{ bos_token }}x") == "<s>x"


def test_template_features():
    render = render_chat_template
    assert render("{{ x | tojson }}", {"x": {"a": "\u00e9<"}}) == '{"a": "\u00e9<"}'
    assert render("{% for i in [1,2,3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}) == "1"
    assert render("{% generation %}answer{% endgeneration %}", {}) == "answer"
    assert len(render("{{ strftime_now('%Y') }}", {})) == 4
    assert render("  {% if true %}\n  yes\n{% endif %}\n", {}) == "  yes\n"  # trim_blocks + lstrip_blocks
    assert render("{{ tools is defined }}", {}) == "False"
    with pytest.raises(ValueError, match="chat template error: Only user and assistant roles"):
        render("{{ raise_exception('Only user and assistant roles are supported') }}", {})
    with pytest.raises(ValueError, match="chat template error"):
        render("{% for %}", {})
    with pytest.raises(ValueError, match="chat template failed: TypeError"):
        render("{{ 1 + 'a' }}", {})


HOSTILE_TEMPLATES = [
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ messages.__class__ }}",
    "{{ (messages | attr('__class__')).__base__ }}",
    "{{ raise_exception.__globals__ }}",
    "{% set x = messages.append({'role': 'x'}) %}",
    "{{ messages[0].update({'role': 'x'}) }}",
    "{{ ('a' * 1000000000) | length }}",
    "{{ 10 ** 10000000 }}",
    "{{ range(10**12) | list }}",
]


@pytest.mark.parametrize("template", HOSTILE_TEMPLATES)
def test_hostile_templates_are_refused(tmp_path, monkeypatch, template):
    monkeypatch.chdir(tmp_path)
    messages = [{"role": "user", "content": "hi"}]
    start = time.perf_counter()
    with pytest.raises(ValueError):
        render_chat_template(template, {"messages": messages})
    assert time.perf_counter() - start < 2
    assert not (tmp_path / "MARKER").exists()
    assert messages == [{"role": "user", "content": "hi"}]
