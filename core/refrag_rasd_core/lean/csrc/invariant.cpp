// Batch-invariant CPU kernels for the lean forward (refrag_rasd_core.lean.invariant).
//
// Every output value is computed by one thread, as one fixed sequence of float operations that depends only on
// that output's own inputs (its row of activations, its query and its keys in logical order), never on how many
// other rows share the call, how they are tiled, or where in the KV cache its keys sit. So a row of an M-row
// forward gives the same bits as the same row alone: a tree verify and a plain decoding step agree exactly.
// Lanes are explicit (16-wide GCC vector types): the arithmetic is the same on AVX-512 and on AVX2 (two halves).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#if defined(__AVX2__) || defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t vi16 __attribute__((vector_size(64)));
typedef int8_t vb16 __attribute__((vector_size(16)));

inline v16 load(const float* p) { v16 v; std::memcpy(&v, p, sizeof(v)); return v; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
inline v16 splat(float a) { return v16{} + a; }

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

// y[m, n] = dot(x[m], w[n]) (+ bias[n]): fp32 weights [N, K].
at::Tensor rows_linear(const at::Tensor& x_, const at::Tensor& w_, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_.dim() == 2 && w_.dim() == 2 && x_.size(1) == w_.size(1), "rows_linear: x [M, K], w [N, K]");
  at::Tensor x = x_.to(at::kFloat).contiguous(), w = w_.contiguous();
  TORCH_CHECK(w.scalar_type() == at::kFloat, "rows_linear: fp32 weights");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  constexpr int64_t R = 8;  // weight rows per block (kept in L1 across the M rows)
  at::parallel_for(0, (N + R - 1) / R, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * R, rows = std::min<int64_t>(R, N - n0);
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        if (rows < R) {
          for (int64_t r = 0; r < rows; ++r) yp[m * N + n0 + r] = dot(xr, wp + (n0 + r) * K, K);
          continue;
        }
        v16 acc[R] = {};
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
          v16 xv = load(xr + k);
          for (int64_t r = 0; r < R; ++r) acc[r] = fma(xv, load(wp + (n0 + r) * K + k), acc[r]);
        }
        for (int64_t r = 0; r < R; ++r) {
          float s = hsum(acc[r]);
          for (int64_t kk = k; kk < K; ++kk) s += xr[kk] * wp[(n0 + r) * K + kk];
          yp[m * N + n0 + r] = s;
        }
      }
    }
  });
  if (bias.has_value() && bias->defined()) y.add_(bias->to(at::kFloat));
  return y;
}

// y[m, n] = sum over blocks b of 32: d[n, b] * (x[m, block] . q[n, block]), int8 weights [N, K] (Q8_0's layout):
// a quarter of fp32's bytes. Per output: the block's two 16-lane products summed, scaled, accumulated in block order.
inline v16 q8_load(const int8_t* p) {  // 16 int8 -> 16 floats (exact); GCC's generic conversion is scalar
#if defined(__AVX512F__)
  return (v16)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
  v16 v;
  std::memcpy(&v, &lo, 32);
  std::memcpy(reinterpret_cast<char*>(&v) + 32, &hi, 32);
  return v;
#else
  float t[16];
  for (int i = 0; i < 16; ++i) t[i] = static_cast<float>(p[i]);
  return load(t);
#endif
}

// One Q8_0 block of 32 inputs into a 16-lane accumulator: acc + d * (x0 * w0 + x1 * w1), the same operations on
// every code path below.
inline v16 q8_block(v16 acc, v16 x0, v16 x1, v16 w0, v16 w1, v16 d) { return fma(d, fma(x1, w1, x0 * w0), acc); }

v16 reduce16(const v16* acc);

// y[m, n] = sum over blocks b of 32 of d[n, b] * (x[m, block] . q[n, block]), int8 weights [N, K] (Q8_0's layout):
// a quarter of fp32's bytes. Weight rows in blocks of 16, each output's 16 lanes summed by reduce16's tree.
at::Tensor rows_linear_q8(const at::Tensor& x_, const at::Tensor& q_, const at::Tensor& d_,
                          const c10::optional<at::Tensor>& bias) {
  at::Tensor x = x_.to(at::kFloat).contiguous(), q = q_.contiguous(), d = d_.to(at::kFloat).contiguous();
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && q.scalar_type() == at::kChar && x.size(1) == q.size(1) &&
              q.size(1) % 32 == 0 && d.size(0) == q.size(0) && d.size(1) == q.size(1) / 32,
              "rows_linear_q8: x [M, K], q int8 [N, K], d [N, K / 32]");
  constexpr int64_t R = 16;
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0), B = K / 32, Np = (N + R - 1) / R * R;
  if (Np != N) {  // zero rows up to a multiple of 16 (their outputs are dropped)
    q = at::cat({q, at::zeros({Np - N, K}, q.options())});
    d = at::cat({d, at::zeros({Np - N, B}, d.options())});
  }
  at::Tensor y = at::empty({M, Np}, x.options());
  const float *xp = x.data_ptr<float>(), *dp = d.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, Np / R, 8, [&](int64_t b0, int64_t b1) {
    std::vector<float> wf(M > 1 ? R * K : 0);  // with several rows: the block's weights as floats, converted once
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n0 = b * R;
      const int8_t* qb = qp + n0 * K;
      const float* db = dp + n0 * B;
      if (M == 1) {
        v16 acc[R] = {};
        for (int64_t blk = 0; blk < B; ++blk) {
          const int64_t k = blk * 32;
          const v16 x0 = load(xp + k), x1 = load(xp + k + 16);
          for (int64_t r = 0; r < R; ++r)
            acc[r] = q8_block(acc[r], x0, x1, q8_load(qb + r * K + k), q8_load(qb + r * K + k + 16),
                              splat(db[r * B + blk]));
        }
        store(yp + n0, reduce16(acc));
        continue;
      }
      for (int64_t r = 0; r < R; ++r)
        for (int64_t k = 0; k < K; k += 16) store(wf.data() + r * K + k, q8_load(qb + r * K + k));
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * K;
        v16 acc[R] = {};
        for (int64_t blk = 0; blk < B; ++blk) {
          const int64_t k = blk * 32;
          const v16 x0 = load(xr + k), x1 = load(xr + k + 16);
          for (int64_t r = 0; r < R; ++r)
            acc[r] = q8_block(acc[r], x0, x1, load(wf.data() + r * K + k), load(wf.data() + r * K + k + 16),
                              splat(db[r * B + blk]));
        }
        store(yp + m * Np + n0, reduce16(acc));
      }
    }
  });
  if (Np != N) y = y.narrow(1, 0, N).contiguous();
  if (bias.has_value() && bias->defined()) y.add_(bias->to(at::kFloat));
  return y;
}

// The 16 sums of 16 accumulators (lane l of the result: the full sum of acc[l]), each by the same fixed tree.
v16 reduce16(const v16* acc) {
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

constexpr int64_t MAX_GROUP = 8;  // query heads per key / value head

// One (row, kv head) of attend(), its G query heads together: scores of the L keys in blocks of 16 (a key's
// score: its DC chunks of q * k accumulated in order, then reduce16's tree), softmax (max, vexp, 16-lane sum),
// the weighted values accumulated in key order.
template <int DC>
void attend_group(const float* q, int64_t G, const float* kbase, const float* vbase, int64_t ctx,
                  const int64_t* tail, int64_t L, float sc, float* s, float* out) {
  constexpr int64_t D = DC * 16;
  static const float zeros[D] = {};
  auto row = [&](const float* base, int64_t j) { return base + (j < ctx ? j : tail[j - ctx]) * D; };
  const int64_t L16 = (L + 15) / 16 * 16;
  for (int64_t j0 = 0; j0 < L16; j0 += 16) {
    const float* kr[16];
    for (int64_t t = 0; t < 16; ++t) kr[t] = j0 + t < L ? row(kbase, j0 + t) : zeros;
    for (int64_t h = 0; h < G; ++h) {
      const float* qh = q + h * D;
      v16 qv[DC];
      for (int c = 0; c < DC; ++c) qv[c] = load(qh + 16 * c);
      v16 acc[16];
      for (int64_t t = 0; t < 16; ++t) {
        v16 a = qv[0] * load(kr[t]);
        for (int c = 1; c < DC; ++c) a = fma(qv[c], load(kr[t] + 16 * c), a);
        acc[t] = a;
      }
      store(s + h * L16 + j0, reduce16(acc) * splat(sc));
    }
  }
  float denom[MAX_GROUP];
  for (int64_t h = 0; h < G; ++h) {
    float* sh = s + h * L16;
    for (int64_t j = L; j < L16; ++j) sh[j] = -std::numeric_limits<float>::infinity();
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < L; ++j) mx = sh[j] > mx ? sh[j] : mx;
    v16 sum = v16{};
    for (int64_t j = 0; j < L16; j += 16) {
      v16 e = vexp(load(sh + j) - splat(mx));
      store(sh + j, e);
      sum += e;
    }
    denom[h] = hsum(sum);
  }
  v16 o[MAX_GROUP * DC] = {};
  for (int64_t j = 0; j < L; ++j) {
    const float* vr = row(vbase, j);
    v16 v[DC];
    for (int c = 0; c < DC; ++c) v[c] = load(vr + 16 * c);
    for (int64_t h = 0; h < G; ++h) {
      const v16 e = splat(s[h * L16 + j]);
      for (int c = 0; c < DC; ++c) o[h * DC + c] = fma(e, v[c], o[h * DC + c]);
    }
  }
  for (int64_t h = 0; h < G; ++h)
    for (int c = 0; c < DC; ++c) store(out + h * D + 16 * c, o[h * DC + c] / splat(denom[h]));
}

// Attention of n query rows q [n, H, D] over one layer's cache keys / values [KV, cap, D]. Row i reads, in
// logical order, the cache slots 0 .. ctx - 1 and then tail[i, 0 .. tail_len[i] - 1]: the same sequence of keys
// a plain step at that position reads, wherever a tree put them. Out [n, H, D]; D: 16, 32, 64 or 128.
at::Tensor attend(const at::Tensor& q_, const at::Tensor& keys, const at::Tensor& values, int64_t ctx,
                  const at::Tensor& tail_, const at::Tensor& tail_len_, double scale) {
  at::Tensor q = q_.to(at::kFloat).contiguous(), tail = tail_.to(at::kLong).contiguous();
  at::Tensor tail_len = tail_len_.to(at::kLong).contiguous();
  TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && keys.sizes() == values.sizes() && keys.size(2) == q.size(2),
              "attend: q [n, H, D], keys / values [KV, cap, D]");
  TORCH_CHECK(keys.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat, "attend: fp32 cache");
  TORCH_CHECK(keys.stride(2) == 1 && values.stride(2) == 1 && keys.stride(1) == keys.size(2) &&
              values.stride(1) == values.size(2), "attend: cache rows must be contiguous");
  const int64_t n = q.size(0), H = q.size(1), D = q.size(2), KV = keys.size(0), T = tail.size(1);
  TORCH_CHECK(H % KV == 0 && tail.size(0) == n && tail_len.size(0) == n, "attend: shapes");
  TORCH_CHECK(D == 16 || D == 32 || D == 64 || D == 128, "attend: head_dim must be 16, 32, 64 or 128");
  const int64_t G = H / KV, ks = keys.stride(0), vs = values.stride(0);
  at::Tensor out = at::empty({n, H, D}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = keys.data_ptr<float>(), *vp = values.data_ptr<float>();
  const int64_t *tp = tail.data_ptr<int64_t>(), *lp = tail_len.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  TORCH_CHECK(G <= MAX_GROUP, "attend: at most ", MAX_GROUP, " query heads per key / value head");
  at::parallel_for(0, n * KV, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s;
    for (int64_t item = b0; item < b1; ++item) {
      const int64_t i = item / KV, g = item % KV, L = ctx + lp[i];
      s.resize(G * ((L + 15) / 16 * 16));
      const float* qg = qp + (i * H + g * G) * D;
      const float *kb = kp + g * ks, *vb = vp + g * vs;
      const int64_t* ti = tp + i * T;
      float* og = op + (i * H + g * G) * D;
      switch (D / 16) {
        case 1: attend_group<1>(qg, G, kb, vb, ctx, ti, L, sc, s.data(), og); break;
        case 2: attend_group<2>(qg, G, kb, vb, ctx, ti, L, sc, s.data(), og); break;
        case 4: attend_group<4>(qg, G, kb, vb, ctx, ti, L, sc, s.data(), og); break;
        case 8: attend_group<8>(qg, G, kb, vb, ctx, ti, L, sc, s.data(), og); break;
        default: TORCH_CHECK(false, "attend: head_dim ", D, " not in 16, 32, 64, 128");
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(refrag_rasd_invariant, m) {
  m.def("rows_linear(Tensor x, Tensor w, Tensor? bias) -> Tensor", &rows_linear);
  m.def("rows_linear_q8(Tensor x, Tensor q, Tensor d, Tensor? bias) -> Tensor", &rows_linear_q8);
  m.def("attend(Tensor q, Tensor keys, Tensor values, int ctx, Tensor tail, Tensor tail_len, float scale) -> Tensor",
        &attend);
}
