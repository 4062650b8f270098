// The small ops of a Llama decoder layer on CPU fp32, for the fused decode path (model/layers/cpu_decoder.py).
// Every row (token) is computed alone, in one fixed order of fp32 operations, so a token gives the same bits
// alone or in any batch. The numerics follow Hugging Face's Llama: RMSNorm w * (x * rsqrt(mean(x^2) + eps)),
// rotate_half rotary embeddings, softmax(q.k * scale) @ v over the positions 0..len-1 of the paged cache, and
// silu(gate) * up; exp is a Cephes-style polynomial (<= 2 ulp), the same in attention and SiLU.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <vector>

#include "kernels.h"
#include "simd.h"

namespace kvserve {
namespace {
// e^x for x in [-87, 88] (clamped outside): 2^n * p(r), x = n ln2 + r, |r| <= ln2/2. Written so that a loop
// over an array of it vectorizes (no branches, no calls).
inline float exp_poly(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest: the 1.5 * 2^23 trick
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// Sum of x[i] * y[i], i < n: 16 lanes over the full chunks (reduced in simd.h's fixed order), then the tail.
inline float dot(const float* x, const float* y, int64_t n) {
  V16 acc = vzero();
  int64_t i = 0;
  for (; i + kGroup <= n; i += kGroup) acc = vfma(vload(x + i), vload(y + i), acc);
  float s = vsum(acc);
  for (; i < n; ++i) s += x[i] * y[i];
  return s;
}

// In place: x = softmax(x) over n values, one fixed order (max, exp, sum left to right, then scale).
void softmax_(float* x, int64_t n) {
  float mx = x[0], sum = 0.0f;
  for (int64_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  for (int64_t i = 0; i < n; ++i) x[i] = exp_poly(x[i] - mx);
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

constexpr int64_t kMaxAcc = 32;  // accumulators of the tiled weighted sum (group * head_dim / 16): registers, or L1

void check(bool ok, const char* what) { TORCH_CHECK(ok, "decoder_ops: ", what); }
bool cpu_float_2d(const at::Tensor& t) {
  return t.dim() == 2 && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous();
}
int64_t grain_for(int64_t row_elems) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_elems)); }
}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check(cpu_float_2d(x), "x must be a contiguous 2-D cpu float32 tensor");
  const int64_t rows = x.size(0), d = x.size(1);
  check(weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.numel() == d, "weight must be [D]");
  at::Tensor out = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float e = static_cast<float>(eps);
  at::parallel_for(0, rows, grain_for(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = xp + r * d;
      const float inv = 1.0f / std::sqrt(dot(row, row, d) / static_cast<float>(d) + e);
      float* o = op + r * d;
      for (int64_t i = 0; i < d; ++i) o[i] = wp[i] * (row[i] * inv);
    }
  });
  return out;
}

void rotary_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t head_dim) {
  check(cpu_float_2d(qkv) && cpu_float_2d(cos) && cpu_float_2d(sin), "qkv, cos, sin must be contiguous 2-D float32");
  const int64_t rows = qkv.size(0), width = qkv.size(1), half = head_dim / 2;
  check(head_dim % 2 == 0 && heads * head_dim <= width, "heads * head_dim must fit in a row of qkv");
  check(cos.size(0) == rows && sin.size(0) == rows && cos.size(1) == head_dim && sin.size(1) == head_dim,
        "cos and sin must be [T, head_dim]");
  float* base = qkv.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(heads * head_dim), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *c = cp + r * head_dim, *s = sp + r * head_dim;
      for (int64_t h = 0; h < heads; ++h) {
        float* x = base + r * width + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {  // x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
          const float a = x[i], b = x[i + half];
          x[i] = a * c[i] - b * s[i];
          x[i + half] = b * c[i + half] + a * s[i + half];
        }
      }
    }
  });
}

void write_kv(at::Tensor& cache, const at::Tensor& qkv, const at::Tensor& slots, int64_t k_offset, int64_t kv_size) {
  check(cache.scalar_type() == at::kFloat && cache.is_contiguous() && cache.dim() == 5 && cache.size(0) == 2,
        "cache must be a contiguous float32 [2, blocks, block_size, kv_heads, head_dim]");
  check(cpu_float_2d(qkv) && k_offset + 2 * kv_size <= qkv.size(1), "qkv rows must hold k and v");
  check(cache.size(3) * cache.size(4) == kv_size, "kv_size must be kv_heads * head_dim");
  check(slots.scalar_type() == at::kLong && slots.is_contiguous() && slots.numel() == qkv.size(0), "slots: [T] int64");
  const int64_t num_slots = cache.size(1) * cache.size(2), width = qkv.size(1);
  float *k = cache.data_ptr<float>(), *v = k + num_slots * kv_size;
  const float* src = qkv.data_ptr<float>();
  const int64_t* sl = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < slots.numel(); ++t) {
    check(sl[t] >= 0 && sl[t] < num_slots, "slot out of range");
    std::memcpy(k + sl[t] * kv_size, src + t * width + k_offset, sizeof(float) * kv_size);
    std::memcpy(v + sl[t] * kv_size, src + t * width + k_offset + kv_size, sizeof(float) * kv_size);
  }
}

at::Tensor decode_attention(const at::Tensor& qkv, const at::Tensor& cache, const at::Tensor& block_tables,
                            const at::Tensor& context_lens, int64_t num_heads, double scale) {
  check(cpu_float_2d(qkv), "qkv must be a contiguous 2-D cpu float32 tensor");
  check(cache.scalar_type() == at::kFloat && cache.is_contiguous() && cache.dim() == 5 && cache.size(0) == 2,
        "cache must be a contiguous float32 [2, blocks, block_size, kv_heads, head_dim]");
  const int64_t nblocks = cache.size(1), bs = cache.size(2), kvh = cache.size(3), d = cache.size(4);
  check(block_tables.scalar_type() == at::kLong && block_tables.dim() == 2 && block_tables.is_contiguous(),
        "block_tables must be [n, max_blocks] int64");
  const int64_t n = block_tables.size(0), max_blocks = block_tables.size(1);
  check(context_lens.scalar_type() == at::kLong && context_lens.numel() == n && context_lens.is_contiguous(),
        "context_lens must be [n] int64");
  check(num_heads % kvh == 0 && qkv.size(0) >= n && num_heads * d <= qkv.size(1), "qkv rows must hold n queries");
  const int64_t group = num_heads / kvh, width = qkv.size(1), kv_row = kvh * d;
  const int64_t* lens = context_lens.data_ptr<int64_t>();
  const int64_t* tables = block_tables.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    check(lens[i] >= 1 && lens[i] <= max_blocks * bs, "context length out of range");
    for (int64_t b = 0; b < (lens[i] + bs - 1) / bs; ++b)
      check(tables[i * max_blocks + b] >= 0 && tables[i * max_blocks + b] < nblocks, "block id out of range");
  }
  at::Tensor out = at::empty({n, num_heads * d}, qkv.options());
  const float *q_all = qkv.data_ptr<float>(), *k_cache = cache.data_ptr<float>();
  const float* v_cache = k_cache + nblocks * bs * kv_row;
  float* out_p = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  const bool lanes = d % kGroup == 0 && group * (d / kGroup) <= kMaxAcc;  // the register-tiled weighted sum
  at::parallel_for(0, n * kvh, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> p;
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t i = w / kvh, g = w % kvh, len = lens[i];
      const int64_t* table = tables + i * max_blocks;
      const float* q = q_all + i * width + g * group * d;  // the group's query heads, one after another
      float* o = out_p + i * num_heads * d + g * group * d;
      p.resize(group * len);
      for (int64_t pos0 = 0; pos0 < len; pos0 += bs) {  // scores of the group's heads against each key
        const float* k = k_cache + table[pos0 / bs] * bs * kv_row + g * d;
        for (int64_t pos = pos0; pos < std::min(len, pos0 + bs); ++pos, k += kv_row)
          for (int64_t j = 0; j < group; ++j) p[j * len + pos] = dot(q + j * d, k, d) * sc;
      }
      for (int64_t j = 0; j < group; ++j) softmax_(p.data() + j * len, len);
      if (lanes) {  // out[j] = sum over positions of p[j, pos] * v[pos], each V row read once for the group
        const int64_t nc = d / kGroup;
        V16 acc[kMaxAcc];
        std::fill(acc, acc + group * nc, vzero());
        for (int64_t pos0 = 0; pos0 < len; pos0 += bs) {
          const float* v = v_cache + table[pos0 / bs] * bs * kv_row + g * d;
          for (int64_t pos = pos0; pos < std::min(len, pos0 + bs); ++pos, v += kv_row)
            for (int64_t c = 0; c < nc; ++c) {
              const V16 vc = vload(v + c * kGroup);
              for (int64_t j = 0; j < group; ++j) acc[j * nc + c] = vfma(vset(p[j * len + pos]), vc, acc[j * nc + c]);
            }
        }
        for (int64_t a = 0; a < group * nc; ++a) vstore(o + a * kGroup, acc[a], kGroup);
      } else {  // any head_dim: the same sums, one lane at a time
        std::fill(o, o + group * d, 0.0f);
        for (int64_t pos = 0; pos < len; ++pos) {
          const float* v = v_cache + (table[pos / bs] * bs + pos % bs) * kv_row + g * d;
          for (int64_t j = 0; j < group; ++j)
            for (int64_t e = 0; e < d; ++e) o[j * d + e] = std::fma(p[j * len + pos], v[e], o[j * d + e]);
        }
      }
    }
  });
  return out;
}

at::Tensor silu_mul(const at::Tensor& gate_up) {
  check(cpu_float_2d(gate_up) && gate_up.size(1) % 2 == 0, "gate_up must be a contiguous [T, 2I] float32 tensor");
  const int64_t rows = gate_up.size(0), inter = gate_up.size(1) / 2;
  at::Tensor out = at::empty({rows, inter}, gate_up.options());
  const float* src = gate_up.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, rows, grain_for(2 * inter), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *g = src + r * 2 * inter, *u = g + inter;
      float* o = dst + r * inter;
      for (int64_t i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + exp_poly(-g[i])) * u[i];
    }
  });
  return out;
}
}  // namespace kvserve
