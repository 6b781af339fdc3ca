// Shared 16-lane float helpers of the batch-invariant kernels (invariant.cpp, q4_rows.cpp, layers.cpp).
//
// Lanes are explicit (16-wide GCC vector types): the arithmetic is the same on AVX-512 and on AVX2 (two halves),
// and the build sets -ffp-contract=off, so each kernel's float operations are exactly what its source says.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#if defined(__AVX2__) || defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>

namespace refrag_rasd {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
// a in every lane: a broadcast only (v16{} + a would also add 0.0f, an instruction the compiler must keep)
inline v16 splat(float a) { return v16{a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }

// a * b + c with one rounding, written out (the build sets -ffp-contract=off: no other product is fused, so every
// kernel's arithmetic is exactly what its source says, whatever code path or loop shape reaches it).
inline v16 fma(v16 a, v16 b, v16 c) {
#if defined(__AVX512F__)
  return (v16)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  __m256 r[2], x[2], y[2], z[2];
  std::memcpy(x, &a, 64);
  std::memcpy(y, &b, 64);
  std::memcpy(z, &c, 64);
  r[0] = _mm256_fmadd_ps(x[0], y[0], z[0]);
  r[1] = _mm256_fmadd_ps(x[1], y[1], z[1]);
  v16 out;
  std::memcpy(&out, r, 64);
  return out;
#else
  return a * b + c;
#endif
}

inline float hsum(v16 a) {  // a fixed tree: lanes i + i+8, then + i+4, + i+2, + i+1
  float t[16];
  std::memcpy(t, &a, sizeof(t));
  float b[8], c[4];
  for (int i = 0; i < 8; ++i) b[i] = t[i] + t[i + 8];
  for (int i = 0; i < 4; ++i) c[i] = b[i] + b[i + 4];
  return (c[0] + c[2]) + (c[1] + c[3]);
}

// dot(a, b) over n values: 16 lanes accumulate in order, a fixed tree sums them, a scalar tail follows in order.
inline float dot(const float* a, const float* b, int64_t n) {
  v16 acc = v16{};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) acc = fma(load(a + k), load(b + k), acc);
  float s = hsum(acc);
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

// exp for x <= 0 (Cephes' expf: range reduction, degree-5 polynomial); exactly 0 below -87.
inline v16 vexp(v16 x) {
  const v16 lo = splat(-87.0f);
  vi16 under = x < lo;
  x = under ? lo : x;
  v16 fx = x * splat(1.44269504088896341f) + splat(0.5f);
  vi16 ti = __builtin_convertvector(fx, vi16);  // truncates toward zero
  v16 t = __builtin_convertvector(ti, v16);
  vi16 gt = t > fx;
  t = gt ? t - splat(1.0f) : t;                  // floor
  x = x - t * splat(0.693359375f) - t * splat(-2.12194440e-4f);
  v16 z = x * x;
  v16 y = splat(1.9875691500e-4f);
  y = y * x + splat(1.3981999507e-3f);
  y = y * x + splat(8.3334519073e-3f);
  y = y * x + splat(4.1665795894e-2f);
  y = y * x + splat(1.6666665459e-1f);
  y = y * x + splat(5.0000001201e-1f);
  y = y * z + x + splat(1.0f);
  vi16 e = (__builtin_convertvector(t, vi16) + 127) << 23;
  v16 p;
  std::memcpy(&p, &e, sizeof(p));
  y = y * p;
  return under ? v16{} : y;
}

// The 16 sums of 16 accumulators (lane l of the result: the full sum of acc[l]), each by the same fixed tree.
inline v16 reduce16(const v16* acc) {
  const vi16 l1a = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const vi16 l1b = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  const vi16 l2a = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  const vi16 l2b = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  const vi16 l3a = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  const vi16 l3b = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  const vi16 l4a = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
  const vi16 l4b = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  v16 r[8], t[4], u[2];
  for (int p = 0; p < 8; ++p)
    r[p] = __builtin_shuffle(acc[2 * p], acc[2 * p + 1], l1a) + __builtin_shuffle(acc[2 * p], acc[2 * p + 1], l1b);
  for (int p = 0; p < 4; ++p)
    t[p] = __builtin_shuffle(r[2 * p], r[2 * p + 1], l2a) + __builtin_shuffle(r[2 * p], r[2 * p + 1], l2b);
  for (int p = 0; p < 2; ++p)
    u[p] = __builtin_shuffle(t[2 * p], t[2 * p + 1], l3a) + __builtin_shuffle(t[2 * p], t[2 * p + 1], l3b);
  return __builtin_shuffle(u[0], u[1], l4a) + __builtin_shuffle(u[0], u[1], l4b);
}

// Attention of n query rows over one layer's cache (invariant.cpp's attend op; see there).
at::Tensor attend(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t ctx,
                  const at::Tensor& tail, const at::Tensor& tail_len, double scale);

// x [M, K] times Q4_1 weights in rows_linear_q4's layout (q4_rows.cpp; see there).
at::Tensor rows_linear_q4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& d, const at::Tensor& m,
                          int64_t N, const c10::optional<at::Tensor>& bias, bool fine);

}  // namespace refrag_rasd
