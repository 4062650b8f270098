"""The fused CPU decoder (model/layers/cpu_decoder.py over model/kernels/decoder_*.cpp).

Each small kernel against its torch reference (rotary and the K/V write bit for bit, RMSNorm, SiLU and
paged decode attention within stated tolerances, attention against float64), each row alone == in a
batch bit for bit, bad indices refused; then whole tiny GGUF models with Q4_1 / Q8_0 weights: greedy
tokens equal transformers' on the same (dequantized) weights, the one-call decode step equals the
layer-by-layer path bit for bit, and chunked prefills mixed with decodes never change a sequence.
"""

from __future__ import annotations

import os

import gguf
import pytest
import torch
import torch.nn.functional as F
from helpers_tokenizer import gpt2_vocab_from_tokenizer_json, write_tiny_gguf, write_tiny_tokenizer

from model import LLM, SamplingParams
from model.kernels import load_quant_kernels
from model.layers.cpu_decoder import CpuDecoder
from model.layers.paged_kv import AttentionMetadata, gather_context, write_kv
from model.layers.rotary import RotaryEmbedding, apply_rotary
from model.loader.gguf import load_gguf

transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def kernels():
    module = load_quant_kernels()
    if module is None:
        pytest.skip("the C++ kernels cannot be built here")
    return module


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


# --------------------------------------------------------------------------- the kernels, one by one


@pytest.mark.parametrize("rows, d", [(1, 576), (7, 576), (5, 100), (3, 8)])
def test_rms_norm_matches_torch_and_is_row_invariant(kernels, rows, d):
    g = torch.Generator().manual_seed(rows * d)
    x = torch.randn(rows, d, generator=g) * 3
    w = torch.rand(d, generator=g) + 0.5
    out = kernels.rms_norm(x, w, 1e-5)
    torch.testing.assert_close(out, F.rms_norm(x, (d,), w, 1e-5), rtol=2e-6, atol=1e-6)
    for r in range(rows):
        assert torch.equal(_bits(kernels.rms_norm(x[r : r + 1].clone(), w, 1e-5)), _bits(out[r : r + 1]))


@pytest.mark.parametrize("heads, kv_heads, head_dim", [(9, 3, 64), (4, 2, 16), (2, 1, 6)])
def test_rotary_is_the_reference_bit_for_bit(kernels, heads, kv_heads, head_dim):
    t = 11
    g = torch.Generator().manual_seed(heads)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, generator=g)
    positions = torch.randint(0, 4000, (t,), generator=g)
    cos, sin = RotaryEmbedding(head_dim, 100000.0, None).cos_sin(positions, torch.float32)
    rot = (heads + kv_heads) * head_dim
    expected = apply_rotary(qkv[:, :rot].reshape(t, heads + kv_heads, head_dim), cos, sin).reshape(t, rot)
    ours = qkv.clone()
    kernels.rotary_(ours, cos.reshape(t, -1), sin.reshape(t, -1), heads + kv_heads, head_dim)
    assert torch.equal(_bits(ours[:, :rot]), _bits(expected))
    assert torch.equal(ours[:, rot:], qkv[:, rot:])  # v untouched


def test_silu_mul_matches_torch(kernels):
    g = torch.Generator().manual_seed(3)
    gate_up = torch.randn(6, 2 * 1536, generator=g) * 4
    gate_up[0, :6] = torch.tensor([0.0, -100.0, 100.0, -88.5, 89.0, 1e-30])
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(kernels.silu_mul(gate_up), F.silu(gate) * up, rtol=3e-6, atol=1e-6)


def test_write_kv_matches_the_paged_write(kernels):
    cache = torch.zeros(2, 6, 4, 2, 8)
    qkv = torch.randn(5, (4 + 2 * 2) * 8)
    slots = torch.tensor([3, 17, 0, 22, 9])
    expected = cache.clone()
    write_kv(expected, qkv[:, 32:48].reshape(5, 2, 8), qkv[:, 48:].reshape(5, 2, 8), slots)
    kernels.write_kv(cache, qkv, slots, 32, 16)
    assert torch.equal(cache, expected)
    with pytest.raises(RuntimeError, match="slot out of range"):
        kernels.write_kv(cache, qkv, torch.tensor([3, 17, 0, 24, 9]), 32, 16)


def _attention_case(seed: int, heads: int, kv_heads: int, d: int, lens: list[int], block_size: int = 4):
    g = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    cache = torch.randn(2, num_blocks, block_size, kv_heads, d, generator=g)
    perm = torch.randperm(num_blocks, generator=g)  # each sequence's blocks scattered over the pool
    max_blocks = max(-(-n // block_size) for n in lens)
    tables = torch.zeros(len(lens), max_blocks, dtype=torch.long)
    used = 0
    for i, n in enumerate(lens):
        nb = -(-n // block_size)
        tables[i, :nb] = perm[used : used + nb]
        used += nb
    qkv = torch.randn(len(lens) + 2, (heads + 2 * kv_heads) * d, generator=g)  # extra rows: prefill tokens
    return cache, tables, torch.tensor(lens), qkv


def _reference_attention(qkv, cache, tables, lens, heads, scale) -> torch.Tensor:
    kv_heads, d = cache.shape[-2:]
    out = []
    for i, n in enumerate(lens.tolist()):
        k, v = gather_context(cache, tables[i, : -(-n // cache.shape[2])], n)
        q = qkv[i, : heads * d].reshape(heads, d).double()
        k = k.double().repeat_interleave(heads // kv_heads, dim=1)  # [n, heads, d]
        v = v.double().repeat_interleave(heads // kv_heads, dim=1)
        p = torch.softmax(torch.einsum("hd,nhd->hn", q, k) * scale, dim=-1)
        out.append(torch.einsum("hn,nhd->hd", p, v).reshape(-1))
    return torch.stack(out).float()


@pytest.mark.parametrize("heads, kv_heads, d", [(9, 3, 64), (4, 4, 16), (6, 2, 24)])
def test_decode_attention_matches_float64_and_is_row_invariant(kernels, heads, kv_heads, d):
    lens = [1, 5, 37, 64, 130, 4]
    cache, tables, ctx, qkv = _attention_case(heads * d, heads, kv_heads, d, lens)
    scale = d**-0.5
    out = kernels.decode_attention(qkv, cache, tables, ctx, heads, scale)
    assert out.shape == (len(lens), heads * d)
    torch.testing.assert_close(out, _reference_attention(qkv, cache, tables, ctx, heads, scale), rtol=1e-5, atol=1e-5)
    for i in range(len(lens)):  # alone, with its own (unpadded) block table
        nb = -(-lens[i] // 4)
        alone = kernels.decode_attention(
            qkv[i : i + 1].clone(), cache, tables[i : i + 1, :nb].clone(), ctx[i : i + 1], heads, scale
        )
        assert torch.equal(_bits(alone), _bits(out[i : i + 1]))


def test_decode_attention_refuses_bad_tables(kernels):
    cache, tables, ctx, qkv = _attention_case(0, 4, 2, 16, [5, 9])
    bad = tables.clone()
    bad[1, 0] = cache.shape[1]
    with pytest.raises(RuntimeError, match="block id out of range"):
        kernels.decode_attention(qkv, cache, bad, ctx, 4, 0.25)
    with pytest.raises(RuntimeError, match="context length out of range"):
        kernels.decode_attention(qkv, cache, tables, torch.tensor([5, 100]), 4, 0.25)
    with pytest.raises(RuntimeError, match="context length out of range"):
        kernels.decode_attention(qkv, cache, tables, torch.tensor([0, 9]), 4, 0.25)


def test_gemm_adds_the_residual_last(kernels):
    from model.kernels.quant_linear import BlockQuantLinear

    blocks = gguf.quants.quantize(torch.randn(48, 64).numpy(), Q.Q8_0)
    lin = BlockQuantLinear(blocks, "Q8_0", 48, 64, bias=torch.randn(48))
    x, residual = torch.randn(3, 64), torch.randn(3, 48)
    fused = kernels.gemm(x, lin.packed, int(lin.qtype), 48, lin.bias, residual)
    assert torch.equal(_bits(fused), _bits(residual + lin(x)))


# --------------------------------------------------------------------------- whole tiny models

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
PROMPTS = [
    [1, 17, 250, 33, 99, 4, 180, 77, 5, 260, 41, 12, 150, 201, 9, 64, 3, 31, 111, 222, 8],
    [1, 40, 41, 42],
    [1] + [7, 77, 177] * 15,
]


def _qtypes(layers: int) -> dict:
    q = {"token_embd.weight": Q.Q8_0, "output.weight": Q.Q8_0}
    for i in range(layers):
        for part in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            q[f"blk.{i}.{part}.weight"] = Q.Q4_1 if (i + len(part)) % 2 else Q.Q8_0
        q[f"blk.{i}.attn_k.weight"] = q[f"blk.{i}.attn_q.weight"]  # fused qkv: one type for its shards
        q[f"blk.{i}.attn_v.weight"] = q[f"blk.{i}.attn_q.weight"]
        q[f"blk.{i}.ffn_up.weight"] = q[f"blk.{i}.ffn_gate.weight"]
    return q


@pytest.fixture(scope="module", params=[("llama", True), ("qwen2", False)], ids=["llama-tied", "qwen2-bias"])
def tiny_gguf(request, tmp_path_factory):
    arch, tie = request.param
    folder = tmp_path_factory.mktemp(f"fused-{arch}")
    write_tiny_tokenizer(str(folder))
    vocab = gpt2_vocab_from_tokenizer_json(os.path.join(folder, "tokenizer.json")) | {"bos_id": 1, "eos_id": 2}
    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[arch]
    config = config_cls(**TINY, tie_word_embeddings=tie)
    torch.manual_seed(0)
    hf = model_cls(config)
    with torch.no_grad():  # non-trivial norms and biases; large q/k so that attention is far from uniform
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(12.0)
    path = str(folder / f"tiny-{arch}.gguf")
    write_tiny_gguf(path, hf.state_dict(), config.to_dict(), vocab, arch=arch, qtypes=_qtypes(2))
    hf.load_state_dict(dict(load_gguf(path).weights()), strict=False)  # the dequantized weights: the oracle
    return path, hf.eval()


def _llm(path: str, **kw) -> LLM:
    return LLM(path, dtype="float32", device="cpu", kv_cache_memory=4 * 1024**2, **kw)


def _hf_greedy(hf, ids: list[int], n: int) -> tuple[list[int], list[torch.Tensor]]:
    """transformers' greedy tokens and, at each, the log-softmax of its logits."""
    out, logprobs = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits = hf(torch.tensor([out])).logits[0, -1]
            logprobs.append(torch.log_softmax(logits.double(), -1))
            out.append(int(logits.argmax()))
    return out[len(ids) :], logprobs


GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def test_greedy_and_logprobs_match_transformers(tiny_gguf):
    path, hf = tiny_gguf
    llm = _llm(path)
    assert isinstance(llm.engine.runner.forward, CpuDecoder)  # auto picked the fused decoder
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=5))
    for prompt, out in zip(PROMPTS, outs):
        tokens, ref = _hf_greedy(hf, prompt, 24)
        assert out.outputs[0].token_ids == tokens
        for step, ref_lp in zip(out.outputs[0].logprobs, ref):  # the first from a prefill, the rest decodes
            for alt in step.top:
                assert abs(alt.logprob - ref_lp[alt.token_id].item()) <= 2e-5, (alt, ref_lp[alt.token_id])


def test_explicit_sdpa_keeps_the_module_path_and_agrees(tiny_gguf):
    path, _ = tiny_gguf
    llm = _llm(path, attention_backend="sdpa")
    assert llm.engine.runner.forward is llm.engine.runner.model
    fused = _llm(path)
    ours = [o.outputs[0].token_ids for o in fused.generate(PROMPTS, GREEDY)]
    assert ours == [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]


def test_one_call_decode_equals_the_layer_path_bit_for_bit(tiny_gguf):
    path, _ = tiny_gguf
    decoder = _llm(path).engine.runner.forward
    n, block_size = 3, 4
    lens = [9, 1, 16]
    caches = [torch.randn(2, 16, block_size, 2, 16) for _ in decoder.layers]
    tables = torch.tensor([[3, 7, 1, 0], [5, 0, 0, 0], [2, 4, 6, 8]])
    slots = torch.tensor(
        [tables[i, (c - 1) // block_size] * block_size + (c - 1) % block_size for i, c in enumerate(lens)]
    )
    meta = AttentionMetadata(slots, block_size, n, tables, torch.tensor(lens))
    x = torch.randn(n, 64)
    cos, sin = (t.reshape(n, -1) for t in decoder.rotary.cos_sin(torch.tensor(lens) - 1, torch.float32))
    one_call_caches = [c.clone() for c in caches]
    one_call = decoder.plan.decode(x, one_call_caches, cos, sin, slots, tables, meta.decode_context_lens)
    layered = x
    for layer, cache in zip(decoder.layers, caches):
        layered = decoder._layer(layered, layer, cache, cos, sin, meta)
    assert torch.equal(_bits(one_call), _bits(layered))
    assert all(torch.equal(a, b) for a, b in zip(one_call_caches, caches))


def test_chunked_prefill_mixed_with_decodes_equals_alone(tiny_gguf):
    path, _ = tiny_gguf
    llm = _llm(path, max_num_batched_tokens=16, max_num_seqs=4)  # prompts split into chunks next to decodes
    together = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY)]
    alone = [_llm(path).generate([p], GREEDY)[0].outputs[0].token_ids for p in PROMPTS]
    assert together == alone


def test_embeddings_through_the_fused_decoder_match_transformers(tiny_gguf):
    path, hf = tiny_gguf
    llm = _llm(path, max_num_batched_tokens=16)
    assert isinstance(llm.engine.runner.forward, CpuDecoder)
    for pooling in ("last", "mean"):
        for ids, vector in zip(PROMPTS, llm.embed(PROMPTS, pooling)):
            with torch.no_grad():
                hidden = hf.model(torch.tensor([ids])).last_hidden_state[0]
            ref = hidden[-1] if pooling == "last" else hidden.mean(0)
            assert (torch.tensor(vector) - ref / ref.norm()).abs().max().item() <= 1e-5
