"""Tiny random Llama-family checkpoints written with transformers' `save_pretrained` (no downloads).

Weights use a large init range so the next-token distribution is peaked and greedy choices are not
near-ties that float noise could flip.
"""

from __future__ import annotations

import os

import torch
from helpers_tokenizer import TINY_EOS_ID, write_tiny_tokenizer

COMMON = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=TINY_EOS_ID,
    pad_token_id=0,
    tie_word_embeddings=False,
)

ARCHS = ["llama", "llama3_scaled", "mistral", "qwen2", "qwen3"]


def hf_config(arch: str):
    import transformers as tf

    if arch == "llama":
        return tf.LlamaConfig(**COMMON, rope_theta=10000.0)
    if arch == "llama3_scaled":
        scaling = dict(
            rope_type="llama3",
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        )
        return tf.LlamaConfig(**{**COMMON, "tie_word_embeddings": True}, rope_theta=500000.0, rope_scaling=scaling)
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, sliding_window=None, rope_theta=10000.0)
    if arch == "qwen2":
        return tf.Qwen2Config(**COMMON, rope_theta=1000000.0, use_sliding_window=False)
    if arch == "qwen3":
        return tf.Qwen3Config(
            **{**COMMON, "tie_word_embeddings": True}, head_dim=32, rope_theta=1000000.0, use_sliding_window=False
        )
    raise ValueError(arch)


def write_tiny_model(dirpath: str, arch: str = "llama", seed: int = 0):
    """Save a tiny random model + tokenizer into dirpath; return the HF model (fp32, eval)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch), dtype=torch.float32).eval()
    os.makedirs(dirpath, exist_ok=True)
    model.save_pretrained(dirpath)
    write_tiny_tokenizer(dirpath, vocab_size=300)
    return model
