// Exact block-quantized GEMM for fp32 activations: out[M, N] = x[M, K] @ W^T (+ bias), W in GGUF Q8_0 / Q4_1.
// pack() regroups the GGUF blocks by 16 output rows (block-major within a group), scales and quants transposed
// so that one load gives one element of all 16 rows. Q8_0 group-block (544 B): d[16] fp16, q[32][16] int8;
// Q4_1 group-block (320 B): d[16] fp16, m[16] fp16, p[16][16] with p[j][r] = q[2j] | q[2j+1] << 4 (row r's nibbles).
// The kernel rebuilds a vector of 16 rows' weights for one k (Q8_0: d*q, Q4_1: fma(d, q, m): exact, the values of
// model/loader/gguf_dequant.py) and multiplies it into one accumulator lane per output (outer-product form), so
// every output is acc = fma(w[n, k], x[m, k], acc) for k = 0..K-1 in order from +0, then + bias: the same fp32
// operations whatever M, the tile shape, the thread split or the ISA (AVX-512, AVX2 or scalar builds).
// With a residual, out = residual + (x @ W^T + bias): the residual added last, as `x + linear(h)` does.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace kvserve {
namespace {
constexpr int64_t kBlock = 32;  // weights per GGUF block; kGroup (simd.h): output rows per packed group
constexpr int kQ8 = 8, kQ4_1 = 3;  // GGMLQuantizationType values
constexpr int64_t src_block_bytes(int qt) { return qt == kQ8 ? 34 : 20; }
constexpr int64_t group_block_bytes(int qt) { return qt == kQ8 ? 32 + 512 : 64 + 256; }


struct Gemm {  // packed groups (gstride bytes each, nb = K/32 blocks), x [M, K], out [M, N], bias [N] or null
  const uint8_t* w; int64_t gstride, nb; const float* x; int64_t k; float* out; int64_t n; const float* bias;
  const float* residual;  // [M, N] or null
};
template <int QT>
inline void scales(const uint8_t* blk, V16& d, V16& m) { d = vhalf(blk), m = QT == kQ8 ? d : vhalf(blk + 32); }

// Rebuilds weights 2j and 2j+1 of a block for the group's 16 rows.
template <int QT>
inline void weights(const uint8_t* blk, V16 d, V16 m, int64_t j, V16& w0, V16& w1) {
  if constexpr (QT == kQ8) {
    w0 = vmul(d, vint8(blk + 32 + 32 * j)), w1 = vmul(d, vint8(blk + 32 + 32 * j + 16));
  } else {
    V16 lo, hi;
    vnibbles(blk + 64 + 16 * j, lo, hi);
    w0 = vfma(d, lo, m), w1 = vfma(d, hi, m);
  }
}

// Stores row tile acc (one V16 per group) at out[m, groups g..], adding the bias after (the same fp32 add).
template <int NV>
inline void store(const Gemm& a, int64_t m, int64_t g, const V16* acc) {
  for (int v = 0; v < NV; ++v) {
    const int64_t n0 = (g + v) * kGroup, cnt = std::min(kGroup, a.n - n0);
    float* o = a.out + m * a.n + n0;
    vstore(o, acc[v], cnt);
    for (int64_t i = 0; a.bias != nullptr && i < cnt; ++i) o[i] += a.bias[n0 + i];
    const float* r = a.residual + m * a.n + n0;
    for (int64_t i = 0; a.residual != nullptr && i < cnt; ++i) o[i] = r[i] + o[i];
  }
}

// Fused (M <= kMaxRows): MR rows of x times NV groups, the weights rebuilt in registers.
template <int QT, int MR, int NV>
void tile(const Gemm& a, int64_t m0, int64_t g) {
  V16 acc[MR][NV];
  for (auto& row : acc) std::fill(row, row + NV, vzero());
  const float* x = a.x + m0 * a.k;
  for (int64_t b = 0; b < a.nb; ++b) {
    const uint8_t* blk[NV];
    V16 d[NV], m[NV];
    for (int v = 0; v < NV; ++v) {
      blk[v] = a.w + (g + v) * a.gstride + b * group_block_bytes(QT);
      scales<QT>(blk[v], d[v], m[v]);
    }
    const float* xb = x + b * kBlock;
    for (int64_t j = 0; j < kBlock / 2; ++j)
      for (int v = 0; v < NV; ++v) {
        V16 w0, w1;
        weights<QT>(blk[v], d[v], m[v], j, w0, w1);
        for (int r = 0; r < MR; ++r) {
          acc[r][v] = vfma(w0, vbcast(xb + r * a.k + 2 * j), acc[r][v]);
          acc[r][v] = vfma(w1, vbcast(xb + r * a.k + 2 * j + 1), acc[r][v]);
        }
      }
  }
  for (int r = 0; r < MR; ++r) store<NV>(a, m0 + r, g, acc[r]);
}

// All mr rows (<= MR) times groups [g0, g1): tiles of nv_for(mr) groups, then narrower ones for the rest.
template <int QT, int MR, int NV = nv_for(MR)>
void rows(const Gemm& a, int mr, int64_t g0, int64_t g1) {
  if constexpr (MR > 1)
    if (mr < MR) return rows<QT, MR - 1>(a, mr, g0, g1);
  for (; g0 + NV <= g1; g0 += NV) tile<QT, MR, NV>(a, 0, g0);
  if constexpr (NV > 1) rows<QT, MR, NV / 2>(a, mr, g0, g1);
}

// Buffered (M > kMaxRows): NV groups rebuilt once into buf[K][NV][16], then every row tile reads them.
template <int QT, int NV>
void decode(const Gemm& a, int64_t g, float* buf) {
  for (int64_t b = 0; b < a.nb; ++b)
    for (int v = 0; v < NV; ++v) {
      const uint8_t* blk = a.w + (g + v) * a.gstride + b * group_block_bytes(QT);
      V16 d, m, w0, w1;
      scales<QT>(blk, d, m);
      for (int64_t j = 0; j < kBlock / 2; ++j) {
        weights<QT>(blk, d, m, j, w0, w1);
        float* o = buf + ((b * kBlock + 2 * j) * NV + v) * kGroup;
        vstore(o, w0, kGroup), vstore(o + NV * kGroup, w1, kGroup);
      }
    }
}

template <int MR, int NV>
void tile_buf(const Gemm& a, const float* buf, int64_t m0, int mr, int64_t g) {
  if constexpr (MR > 1)
    if (mr < MR) return tile_buf<MR - 1, NV>(a, buf, m0, mr, g);
  V16 acc[MR][NV];
  for (auto& row : acc) std::fill(row, row + NV, vzero());
  const float* x = a.x + m0 * a.k;
  for (int64_t kk = 0; kk < a.k; ++kk)
    for (int v = 0; v < NV; ++v) {
      const V16 w = vload(buf + (kk * NV + v) * kGroup);
      for (int r = 0; r < MR; ++r) acc[r][v] = vfma(w, vbcast(x + r * a.k + kk), acc[r][v]);
    }
  for (int r = 0; r < MR; ++r) store<NV>(a, m0 + r, g, acc[r]);
}
template <int QT, int NV>
void strip(const Gemm& a, float* buf, int64_t g, int64_t m_begin, int64_t m_end) {
  decode<QT, NV>(a, g, buf);
  for (int64_t m0 = m_begin; m0 < m_end; m0 += kMaxRows)
    tile_buf<kMaxRows, NV>(a, buf, m0, static_cast<int>(std::min<int64_t>(kMaxRows, m_end - m0)), g);
}

// Groups [g0, g1) of one thread: fused for one row tile, else strips of NV groups decoded once per 256 rows.
template <int QT>
void run(const Gemm& a, int64_t mrows, int64_t g0, int64_t g1) {
  if (mrows <= kMaxRows) {
    for (int64_t p = g0; p < g1; p += 8) rows<QT, kMaxRows>(a, static_cast<int>(mrows), p, std::min(p + 8, g1));
    return;
  }
  constexpr int NV = nv_for(kMaxRows);
  thread_local std::vector<float> space;  // the strip buffer, 64-byte aligned: no vector store splits a cache line
  space.resize(a.k * NV * kGroup + kGroup);
  float* buf = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(space.data()) + 63) & ~uintptr_t{63});
  for (int64_t c = 0; c < mrows; c += 256) {  // row chunks: x stays in the L2 across the strips
    const int64_t ce = std::min(c + 256, mrows);
    int64_t g = g0;
    for (; g + NV <= g1; g += NV) strip<QT, NV>(a, buf, g, c, ce);
    for (; g < g1; ++g) strip<QT, 1>(a, buf, g, c, ce);
  }
}

void check(bool ok, int64_t qt, const char* what) {
  TORCH_CHECK(qt == kQ8 || qt == kQ4_1, "quant_gemm: only Q8_0 (8) and Q4_1 (3), got ", qt);
  TORCH_CHECK(ok, "quant_gemm: ", what);
}

}  // namespace

at::Tensor gemm(const at::Tensor& x, const at::Tensor& packed, int64_t qt, int64_t n,
                const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual) {
  const int64_t k = x.size(-1), nb = k / kBlock, ngroups = (n + kGroup - 1) / kGroup;
  check(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(), qt, "x must be 2-D cpu float32");
  check(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.dim() == 2 && k % kBlock == 0 &&
            packed.size(0) == ngroups && packed.size(1) == nb * group_block_bytes(qt), qt, "packed: wrong N or K");
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  check(!b.defined() || (b.scalar_type() == at::kFloat && b.numel() == n), qt, "bias must be float32 [N]");
  const at::Tensor xc = x.contiguous();
  const int64_t mrows = xc.size(0);
  const at::Tensor res = residual.has_value() ? residual->contiguous() : at::Tensor();
  check(!res.defined() || (res.scalar_type() == at::kFloat && res.dim() == 2 && res.size(0) == mrows &&
                           res.size(1) == n), qt, "residual must be float32 [M, N]");
  at::Tensor out = at::empty({mrows, n}, xc.options());
  if (mrows == 0 || n == 0) return out;
  TORCH_CHECK(k > 0, "quant_gemm: K must be positive");
  const Gemm a{packed.data_ptr<uint8_t>(), packed.size(1), nb, xc.data_ptr<float>(), k, out.data_ptr<float>(), n,
               b.defined() ? b.data_ptr<float>() : nullptr, res.defined() ? res.data_ptr<float>() : nullptr};
  const int64_t grain = std::max<int64_t>(1, 65536 / (kGroup * k));  // >= ~64k weights per thread
  at::parallel_for(0, ngroups, grain, [&](int64_t g0, int64_t g1) {
    qt == kQ8 ? run<kQ8>(a, mrows, g0, g1) : run<kQ4_1>(a, mrows, g0, g1);
  });
  return out;
}

// GGUF blocks [N, K/32 * block_bytes] -> packed groups [ceil(N/16), K/32 * group_block_bytes]; rows past N are 0.
at::Tensor pack(const at::Tensor& blocks, int64_t qt, int64_t n, int64_t k) {
  const int64_t nb = k / kBlock, sbb = src_block_bytes(qt), gbb = group_block_bytes(qt);
  check(k % kBlock == 0 && blocks.scalar_type() == at::kByte && blocks.numel() == n * nb * sbb, qt,
        "blocks must be uint8, N * K/32 * block_bytes of them");
  const at::Tensor src_t = blocks.contiguous();
  at::Tensor out = at::zeros({(n + kGroup - 1) / kGroup, nb * gbb}, src_t.options());
  const uint8_t* src = src_t.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  at::parallel_for(0, out.size(0), 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g)
      for (int64_t r = 0; r < kGroup && g * kGroup + r < n; ++r)
        for (int64_t b = 0; b < nb; ++b) {
          const uint8_t* s = src + ((g * kGroup + r) * nb + b) * sbb;
          uint8_t* o = dst + (g * nb + b) * gbb;
          auto nib = [&](int64_t e) { return e < 16 ? (s[4 + e] & 15) : (s[4 + e - 16] >> 4); };
          std::memcpy(o + 2 * r, s, 2);
          if (qt == kQ8) {
            for (int64_t e = 0; e < kBlock; ++e) o[32 + e * kGroup + r] = s[2 + e];
          } else {
            std::memcpy(o + 32 + 2 * r, s + 2, 2);
            for (int64_t j = 0; j < kBlock / 2; ++j) o[64 + j * kGroup + r] = nib(2 * j) | (nib(2 * j + 1) << 4);
          }
        }
  });
  return out;
}

// Debug: the fp32 weights exactly as the kernel rebuilds them (decode), as [ceil(N/16), K, 16]: group, k, row.
at::Tensor unpack(const at::Tensor& packed, int64_t qt, int64_t k) {
  check(packed.is_contiguous() && packed.dim() == 2 && k % kBlock == 0 &&
            packed.size(1) == k / kBlock * group_block_bytes(qt), qt, "the packed weight does not match K");
  at::Tensor out = at::empty({packed.size(0), k, kGroup}, packed.options().dtype(at::kFloat));
  const Gemm a{packed.data_ptr<uint8_t>(), packed.size(1), k / kBlock, nullptr, k, nullptr, 0, nullptr, nullptr};
  for (int64_t g = 0; g < packed.size(0); ++g) {
    float* buf = out.data_ptr<float>() + g * k * kGroup;
    qt == kQ8 ? decode<kQ8, 1>(a, g, buf) : decode<kQ4_1, 1>(a, g, buf);
  }
  return out;
}
}  // namespace kvserve

