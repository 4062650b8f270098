// V16: 16 fp32 lanes as one zmm (AVX-512), two ymm (AVX2) or an array (scalar), chosen by the compiler flags
// (-march=native at build time). Every op is IEEE-exact alike on all three, and the reductions run in one fixed
// order (a tree of halves), so a kernel written with them gives the same bits on every ISA build.
#pragma once
#include <c10/util/Half.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kvserve {
constexpr int64_t kGroup = 16;  // lanes of one V16

// V16: 16 fp32 lanes (one per row of a group), as one zmm, two ymm or an array; the ops are IEEE-exact alike.
#if defined(__AVX512F__)
constexpr const char* kIsa = "avx512";
constexpr int kMaxRows = 8;  // rows of x per tile; nv_for: groups per tile, the accumulators in 32 registers
constexpr int nv_for(int mr) { return mr == 1 ? 8 : (mr <= 4 ? 4 : 2); }
using I128 = __m128i;
struct V16 { __m512 v; };
inline V16 vzero() { return {_mm512_setzero_ps()}; }
inline V16 vfma(V16 a, V16 b, V16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
inline V16 vmul(V16 a, V16 b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline V16 vadd(V16 a, V16 b) { return {_mm512_add_ps(a.v, b.v)}; }
inline V16 vset(float x) { return {_mm512_set1_ps(x)}; }
inline V16 vbcast(const float* p) { return {_mm512_set1_ps(*p)}; }
inline V16 vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline V16 vhalf(const uint8_t* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p))}; }
inline I128 load16(const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const I128*>(p)); }
inline V16 vint8(const uint8_t* p) { return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(load16(p)))}; }
inline void vnibbles(const uint8_t* p, V16& lo, V16& hi) {
  const __m512i b = _mm512_cvtepu8_epi32(load16(p));
  lo.v = _mm512_cvtepi32_ps(_mm512_and_si512(b, _mm512_set1_epi32(15)));
  hi.v = _mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4));
}
inline void vstore(float* p, V16 a, int64_t n) {
  n == kGroup ? _mm512_storeu_ps(p, a.v) : _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), a.v);
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr const char* kIsa = "avx2";
constexpr int kMaxRows = 4;
constexpr int nv_for(int mr) { return mr == 1 ? 2 : 1; }  // 16 ymm registers
using I128 = __m128i;
struct V16 { __m256 a, b; };
inline V16 vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline V16 vfma(V16 x, V16 y, V16 z) { return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)}; }
inline V16 vmul(V16 x, V16 y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
inline V16 vadd(V16 x, V16 y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
inline V16 vset(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline V16 vbcast(const float* p) { return {_mm256_broadcast_ss(p), _mm256_broadcast_ss(p)}; }
inline V16 vload(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline V16 vhalf(const uint8_t* p) {
  const I128* q = reinterpret_cast<const I128*>(p);
  return {_mm256_cvtph_ps(_mm_loadu_si128(q)), _mm256_cvtph_ps(_mm_loadu_si128(q + 1))};
}
inline V16 vint8(const uint8_t* p) {
  const I128 b = _mm_loadu_si128(reinterpret_cast<const I128*>(p));
  return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
inline void vnibbles(const uint8_t* p, V16& lo, V16& hi) {
  const I128 b = _mm_loadu_si128(reinterpret_cast<const I128*>(p));
  const __m256i x = _mm256_cvtepu8_epi32(b), y = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)), f = _mm256_set1_epi32(15);
  lo = {_mm256_cvtepi32_ps(_mm256_and_si256(x, f)), _mm256_cvtepi32_ps(_mm256_and_si256(y, f))};
  hi = {_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 4)), _mm256_cvtepi32_ps(_mm256_srli_epi32(y, 4))};
}
inline void vstore(float* p, V16 a, int64_t n) {
  alignas(32) float t[kGroup];
  _mm256_store_ps(t, a.a), _mm256_store_ps(t + 8, a.b), std::memcpy(p, t, sizeof(float) * n);
}
#else
constexpr const char* kIsa = "scalar";
constexpr int kMaxRows = 4;
constexpr int nv_for(int) { return 1; }
struct V16 { float v[kGroup]; };
#define KV_LANES(expr) V16 r; for (int64_t i = 0; i < kGroup; ++i) r.v[i] = (expr); return r
inline V16 vzero() { KV_LANES(0.0f); }
inline V16 vfma(V16 a, V16 b, V16 c) { KV_LANES(std::fma(a.v[i], b.v[i], c.v[i])); }
inline V16 vmul(V16 a, V16 b) { KV_LANES(a.v[i] * b.v[i]); }
inline V16 vadd(V16 a, V16 b) { KV_LANES(a.v[i] + b.v[i]); }
inline V16 vset(float x) { KV_LANES(x); }
inline V16 vbcast(const float* p) { KV_LANES(*p); }
inline V16 vload(const float* p) { KV_LANES(p[i]); }
inline V16 vhalf(const uint8_t* p) { KV_LANES(c10::detail::fp16_ieee_to_fp32_value(p[2 * i] | (p[2 * i + 1] << 8))); }
inline V16 vint8(const uint8_t* p) { KV_LANES(static_cast<float>(static_cast<int8_t>(p[i]))); }
inline void vnibbles(const uint8_t* p, V16& lo, V16& hi) {
  for (int64_t i = 0; i < kGroup; ++i) lo.v[i] = static_cast<float>(p[i] & 15), hi.v[i] = static_cast<float>(p[i] >> 4);
}
inline void vstore(float* p, V16 a, int64_t n) { std::memcpy(p, a.v, sizeof(float) * n); }
#endif

// Sum of the 16 lanes in one fixed order on every ISA: t[i] += t[i+8], then t[i] += t[i+4], +2, +1.
inline float vsum(V16 a) {
#if defined(__AVX512F__)
  const __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a.v), 1)));
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  const __m256 s8 = _mm256_add_ps(a.a, a.b);
#endif
#if defined(__AVX2__) || defined(__AVX512F__)
  const __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  return _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)));
#else
  float t[kGroup];
  vstore(t, a, kGroup);
  for (int64_t h = kGroup / 2; h >= 1; h /= 2)
    for (int64_t i = 0; i < h; ++i) t[i] += t[i + h];
  return t[0];
#endif
}
}  // namespace kvserve
