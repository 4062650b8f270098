"""Test helpers: tiny tokenizers and tiny GGUF files written from scratch (no downloads).

- `write_tiny_tokenizer(dir)`: a byte-level BPE `tokenizer.json` + `tokenizer_config.json` that
  `transformers.AutoTokenizer` and `model.tokenizer.Tokenizer.from_hf_dir` both load. Save a tiny
  random HF model into the same directory to get a complete tiny checkpoint.
- `tiny_sentencepiece(...)`: a small SentencePiece BPE model (byte fallback) as (pieces, scores, types).
- `write_tiny_gguf(path, state_dict, config, vocab)`: a GGUF in llama.cpp's layout (names, q/k
  permutation for llama) from a HF state dict, with tokenizer metadata.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Sequence

import numpy as np

TINY_UNK_ID, TINY_BOS_ID, TINY_EOS_ID = 0, 1, 2
TINY_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! Hello there, how are you today?",
    "Tokenizers split text into pieces; models read the pieces.",
    "Numbers like 12345 and 3.14159 appear in text, as do emails like a@b.c.",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001f600 \u00fcber",
    "user assistant system: the chat roles",
] * 4


def write_tiny_tokenizer(dirpath: str, vocab_size: int = 300, add_bos_token: bool = True) -> None:
    """Train a byte-level BPE on a small corpus; write tokenizer.json and tokenizer_config.json.

    Ids: <unk>=0, <s>=1 (BOS), </s>=2 (EOS); then the 256 byte symbols, then merges, all < vocab_size.
    With `add_bos_token`, tokenizer.json's post-processor prepends <s> (that is where transformers
    looks; the config flag is written too, for readers).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < len(TINY_SPECIAL_TOKENS) + 256:
        raise ValueError("vocab_size must leave room for 3 special tokens and 256 byte symbols")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() <= vocab_size
    if add_bos_token:  # transformers (v5) takes BOS from tokenizer.json's post-processor
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", TINY_BOS_ID)]
        )
    os.makedirs(dirpath, exist_ok=True)
    tok.save(os.path.join(dirpath, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": add_bos_token,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": TINY_CHAT_TEMPLATE,
    }
    with open(os.path.join(dirpath, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def tiny_sentencepiece(vocab_size: int = 400) -> tuple[list[str], list[float], list[int], Any]:
    """A SentencePiece BPE model with byte fallback: (pieces, scores, llama.cpp token types, processor)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=["<tool>"],
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
    types = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif pieces[i] == "<tool>":
            types.append(4)
        else:
            types.append(1)
    return pieces, scores, types, sp


def gpt2_vocab_from_tokenizer_json(path: str) -> dict[str, Any]:
    """tokens / merges / token types of a byte-level BPE tokenizer.json, as GGUF metadata wants them."""
    data = json.load(open(path, encoding="utf-8"))
    vocab = data["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    special = {a["content"] for a in data["added_tokens"] if a["special"]}
    types = [3 if t in special else 1 for t in tokens]
    return {"model": "gpt2", "pre": "default", "tokens": tokens, "merges": merges, "types": types}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (the inverse of what the loader undoes)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LAYER_PARTS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)
    part, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{_LAYER_PARTS[part]}.{kind}"


def write_tiny_gguf(
    path: str,
    state_dict: dict[str, Any],
    config: dict[str, Any],
    vocab: dict[str, Any],
    arch: str = "llama",
    qtypes: dict[str, Any] | None = None,
    extra_kv: dict[str, Any] | None = None,
    skip: Sequence[str] = (),
    extra_tensors: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a GGUF like llama.cpp's converter would: metadata from a HF config dict, tensors renamed
    (q/k permuted for llama), 2-D weights stored as `qtypes.get(gguf_name, F32)`."""
    import gguf

    w = gguf.GGUFWriter(path, arch)
    w.add_name(config.get("name", "tiny"))
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    rope = config.get("rope_parameters") or {}
    w.add_rope_freq_base(float(config.get("rope_theta") or rope.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
    else:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_vocab_size(config["vocab_size"])
    w.add_tokenizer_model(vocab["model"])
    w.add_tokenizer_pre(vocab.get("pre", "default"))
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    if "merges" in vocab:
        w.add_token_merges(vocab["merges"])
    if "scores" in vocab:
        w.add_token_scores(vocab["scores"])
    for key in ("bos", "eos", "unk", "pad"):
        if f"{key}_id" in vocab:
            getattr(
                w,
                {
                    "bos": "add_bos_token_id",
                    "eos": "add_eos_token_id",
                    "unk": "add_unk_token_id",
                    "pad": "add_pad_token_id",
                }[key],
            )(vocab[f"{key}_id"])
    if "add_bos" in vocab:
        w.add_add_bos_token(vocab["add_bos"])
    if "chat_template" in vocab:
        w.add_chat_template(vocab["chat_template"])
    for key, value in (extra_kv or {}).items():
        if isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    qtypes = qtypes or {}
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for hf, tensor in state_dict.items():
        name = gguf_name(hf)
        if name in skip or (name == "output.weight" and config.get("tie_word_embeddings")):
            continue  # llama.cpp writes no output.weight for tied embeddings
        data = tensor.detach().float().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, np.float32)
        if arch == "llama" and name.endswith("attn_q.weight"):
            data = _permute(data, heads)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            data = _permute(data, kv_heads)
        qtype = qtypes.get(name, gguf.GGMLQuantizationType.F32) if data.ndim == 2 else gguf.GGMLQuantizationType.F32
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, np.ascontiguousarray(data))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, np.ascontiguousarray(data.astype(np.float16)))
        else:
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(data), qtype), raw_dtype=qtype)
    for name, data in (extra_tensors or {}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
