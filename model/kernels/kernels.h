// The kernels of model/kernels, shared by its translation units (bindings in decoder_plan.cpp).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

namespace kvserve {
// quant_gemm.cpp: out[M, N] = (residual +) x[M, K] @ W^T (+ bias), W packed from GGUF Q8_0 / Q4_1 blocks.
at::Tensor gemm(const at::Tensor& x, const at::Tensor& packed, int64_t qt, int64_t n,
                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual);
at::Tensor pack(const at::Tensor& blocks, int64_t qt, int64_t n, int64_t k);
at::Tensor unpack(const at::Tensor& packed, int64_t qt, int64_t k);

// decoder_ops.cpp: the small ops of a Llama decoder layer, each row computed alone in one fixed order.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
void rotary_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t head_dim);
void write_kv(at::Tensor& cache, const at::Tensor& qkv, const at::Tensor& slots, int64_t k_offset, int64_t kv_size);
at::Tensor decode_attention(const at::Tensor& qkv, const at::Tensor& cache, const at::Tensor& block_tables,
                            const at::Tensor& context_lens, int64_t num_heads, double scale);
at::Tensor silu_mul(const at::Tensor& gate_up);
}  // namespace kvserve
