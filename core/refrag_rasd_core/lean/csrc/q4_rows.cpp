// 4-bit and 8-bit GGUF weights times int8 activations, batch-invariant (refrag_rasd_core.lean.q4).
//
// The default target's decoder linears are Q4_1 blocks (32 weights w = d * q + m, q in 0..15) and its LM head Q8_0
// blocks (w = d * q, q in -127..127). As llama.cpp does, each row of activations is quantized per block of 32 to
// int8 (x ~ dx * xq), so a block's product is an exact integer dot times d * dx (+ m * dx * sum(xq) for Q4_1).
// With `fine` (the default) the block's remainder is quantized again (x ~ dx * xq + dr * xr) and its integer dot
// added: ~16-bit activations for twice the integer work (one int8 level changed ~5% of the default model's short
// answers against fp32 arithmetic on the same weights; see quantize()).
//
// Layout: 16 weight rows per tile; the 16 lanes of a vector are the tile's 16 output rows. Per tile and block, the
// integer dots of all 16 rows accumulate in one int32 vector over the block's 8 groups of 4 values (AVX-512 VNNI's
// vpdpbusd with the activations' 4 values broadcast; on AVX2, vpmaddubsw + vpmaddwd give the same integers), then
// one conversion and two fused multiply-adds fold the block into each row's float accumulator, blocks in order.
// So every output is one fixed sequence of float operations over its own activations and weights (no horizontal
// sums): a row gives the same bits alone and among any number of rows, on either instruction set.
//
// Q4_1 tile block (256 bytes): 4 vectors of 64 bytes; vector j, byte 4 r + v holds row r's value 4 (2 j) + v in its
// low nibble and value 4 (2 j + 1) + v in its high nibble. Q8_0 tile block (512 bytes): 8 vectors of 64 bytes;
// vector g, byte 4 r + v = row r's value 4 g + v. Scales d (and Q4_1's m; Q8_0's per-row sums of q) [tiles, B, 16].
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "vec.h"

namespace refrag_rasd {
namespace {

inline int32_t word(const int8_t* p) { int32_t v; std::memcpy(&v, p, 4); return v; }

constexpr int64_t R = 16;  // weight rows per tile: the 16 lanes
#ifndef Q4_MC
#define Q4_MC 4
#endif
constexpr int MC = Q4_MC;  // activation rows per pass over a tile's block

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define Q4_VNNI 1
// A Q4_1 tile block unpacked: 8 vectors of 16 rows x 4 values (0..15).
struct Q4Block { __m512i g[8]; };
inline Q4Block unpack_q4(const uint8_t* w) {
  const __m512i mask = _mm512_set1_epi8(0x0F);
  Q4Block b;
  for (int j = 0; j < 4; ++j) {
    const __m512i v = _mm512_loadu_si512(w + 64 * j);
    b.g[2 * j] = _mm512_and_si512(v, mask);
    b.g[2 * j + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
  }
  return b;
}
// The 16 rows' integer dots with 32 activations of each of MR rows, as floats (exact: |dot| <= 32 * 15 * 127).
// Integer sums are exact in any order: the groups run interleaved over the rows in two chains each.
template <int MR>
inline void dots_q4(const Q4Block& b, const int8_t* const* x, v16* out) {
  __m512i acc[MR][2];
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  for (int g = 0; g < 8; ++g)
    for (int i = 0; i < MR; ++i)
      acc[i][g & 1] = _mm512_dpbusd_epi32(acc[i][g & 1], b.g[g], _mm512_set1_epi32(word(x[i] + 4 * g)));
  for (int i = 0; i < MR; ++i) out[i] = (v16)_mm512_cvtepi32_ps(_mm512_add_epi32(acc[i][0], acc[i][1]));
}
// Q8_0: vpdpbusd takes unsigned x signed, so the activations go in offset by 128 (xu = xq + 128) and 128 times the
// row's block sum of q comes off: the same integer dot.
template <int MR>
inline void dots_q8(const int8_t* w, const uint8_t* const* xu, const int32_t* qsum, v16* out) {
  __m512i acc[MR][2];
  const __m512i off = _mm512_slli_epi32(_mm512_loadu_si512(qsum), 7);
  for (int i = 0; i < MR; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_si512();
  for (int g = 0; g < 8; ++g) {
    const __m512i wv = _mm512_loadu_si512(w + 64 * g);
    for (int i = 0; i < MR; ++i)
      acc[i][g & 1] = _mm512_dpbusd_epi32(
          acc[i][g & 1], _mm512_set1_epi32(word(reinterpret_cast<const int8_t*>(xu[i]) + 4 * g)), wv);
  }
  for (int i = 0; i < MR; ++i)
    out[i] = (v16)_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(acc[i][0], acc[i][1]), off));
}
#elif defined(__AVX2__)
struct Q4Block { __m256i g[16]; };  // per group: rows 0-7, rows 8-15
inline Q4Block unpack_q4(const uint8_t* w) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  Q4Block b;
  for (int j = 0; j < 4; ++j)
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * j + 32 * h));
      b.g[2 * (2 * j) + h] = _mm256_and_si256(v, mask);
      b.g[2 * (2 * j + 1) + h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
  return b;
}
inline v16 join(__m256i lo, __m256i hi) {
  const __m256 f0 = _mm256_cvtepi32_ps(lo), f1 = _mm256_cvtepi32_ps(hi);
  v16 out;
  std::memcpy(&out, &f0, 32);
  std::memcpy(reinterpret_cast<char*>(&out) + 32, &f1, 32);
  return out;
}
template <int MR>
inline void dots_q4(const Q4Block& b, const int8_t* const* x, v16* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  for (int i = 0; i < MR; ++i) {
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int g = 0; g < 8; ++g) {
      const __m256i xv = _mm256_set1_epi32(word(x[i] + 4 * g));
      for (int h = 0; h < 2; ++h)  // |pair| <= 2 * 15 * 127: no saturation
        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(_mm256_maddubs_epi16(b.g[2 * g + h], xv), ones));
    }
    out[i] = join(acc[0], acc[1]);
  }
}
template <int MR>
inline void dots_q8(const int8_t* w, const int8_t* const* x, const int32_t* qsum, v16* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  (void)qsum;
  for (int i = 0; i < MR; ++i) {
    __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int g = 0; g < 8; ++g) {
      const __m256i xv = _mm256_set1_epi32(word(x[i] + 4 * g));
      for (int h = 0; h < 2; ++h) {  // |w| times x with w's sign: |pair| <= 2 * 127 * 127, no saturation
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 64 * g + 32 * h));
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(p, ones));
      }
    }
    out[i] = join(acc[0], acc[1]);
  }
}
#else
struct Q4Block { uint8_t q[8][64]; };
inline Q4Block unpack_q4(const uint8_t* w) {
  Q4Block b;
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < 64; ++i) {
      b.q[2 * j][i] = w[64 * j + i] & 0x0F;
      b.q[2 * j + 1][i] = w[64 * j + i] >> 4;
    }
  return b;
}
template <int MR>
inline void dots_q4(const Q4Block& b, const int8_t* const* x, v16* out) {
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < 16; ++r) {
      int32_t s = 0;
      for (int g = 0; g < 8; ++g)
        for (int v = 0; v < 4; ++v) s += b.q[g][4 * r + v] * x[i][4 * g + v];
      out[i][r] = static_cast<float>(s);
    }
}
template <int MR>
inline void dots_q8(const int8_t* w, const int8_t* const* x, const int32_t* qsum, v16* out) {
  (void)qsum;
  for (int i = 0; i < MR; ++i)
    for (int r = 0; r < 16; ++r) {
      int32_t s = 0;
      for (int g = 0; g < 8; ++g)
        for (int v = 0; v < 4; ++v) s += w[64 * g + 4 * r + v] * x[i][4 * g + v];
      out[i][r] = static_cast<float>(s);
    }
}
#endif

// Activations quantized per row and block of 32 (the kernel's only view of x): dx = max |x| / 127,
// xq = round(x / dx) (nearest, ties to even), xu = xq + 128. With `fine`, the remainder is quantized again:
// dr = dx / 254, xr = round((x - dx * xq) / dr) (|xr| <= 127), so x = dx * xq + dr * xr to 1 / 32,258 of the
// block's largest value (int8 alone: 1 / 254; llama.cpp's Q8 activations stop there). Per row and block
// sx = dx * sum(xq) (+ dr * sum(xr)), the Q4_1 offset's factor.
struct Quantized {
  std::vector<int8_t> xq, xr;
  std::vector<uint8_t> xu, xru;
  std::vector<float> dx, dr, sx;
  int64_t Kp, B;
  bool fine;
};

// x[0, n) times inv, rounded to nearest (ties to even) and clamped to [-127, 127], into q (and q + 128 into u
// unless null); returns the values' sum.
int32_t quantize_values(const float* x, int64_t n, float inv, int8_t* q, uint8_t* u) {
  int32_t s = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int32_t v = std::max(-127, std::min(127, static_cast<int32_t>(std::nearbyint(x[k] * inv))));
    q[k] = static_cast<int8_t>(v);
    if (u != nullptr) u[k] = static_cast<uint8_t>(v + 128);
    s += v;
  }
  return s;
}

Quantized quantize(const at::Tensor& x, int64_t Kp, bool offset, bool fine) {
  const int64_t M = x.size(0), K = x.size(1), B = Kp / 32;
  const int64_t nf = fine ? M * Kp : 0;
  Quantized q{std::vector<int8_t>(M * Kp, 0), std::vector<int8_t>(nf, 0),
              std::vector<uint8_t>(offset ? M * Kp : 0, 128), std::vector<uint8_t>(offset ? nf : 0, 128),
              std::vector<float>(M * B, 0.0f), std::vector<float>(M * B, 0.0f), std::vector<float>(M * B, 0.0f),
              Kp, B, fine};
  const float* xp = x.data_ptr<float>();
  float rest[32];
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k0 = b * 32, n = std::min<int64_t>(K, k0 + 32) - k0, at = r * Kp + k0, rb = r * B + b;
      if (n <= 0) continue;
      const float* xb = xp + r * K + k0;
      float amax = 0.0f;
      for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(xb[k]));
      const int32_t s1 = quantize_values(xb, n, amax > 0.0f ? 127.0f / amax : 0.0f, q.xq.data() + at,
                                         offset ? q.xu.data() + at : nullptr);
      q.dx[rb] = amax / 127.0f;
      q.sx[rb] = q.dx[rb] * static_cast<float>(s1);
      if (!fine) continue;
      // the remainder, quantized with the step dx / 254: its largest possible value |x - dx * xq| <= dx / 2
      // maps to 127 (a remainder that rounding pushed a hair past it is clamped)
      for (int64_t k = 0; k < n; ++k) rest[k] = xb[k] - q.dx[rb] * static_cast<float>(q.xq[at + k]);
      const float dr = q.dx[rb] / 254.0f;
      const int32_t s2 = quantize_values(rest, n, dr > 0.0f ? 1.0f / dr : 0.0f, q.xr.data() + at,
                                         offset ? q.xru.data() + at : nullptr);
      q.dr[rb] = dr;
      q.sx[rb] = q.sx[rb] + dr * static_cast<float>(s2);
    }
  }
  return q;
}

// One tile (16 output rows) for activation rows [m0, m0 + MR): blocks in order; per block and row, the integer
// dot, then acc = fma(dot, d * dx, acc) (with `fine`: then acc = fma(dot_r, d * dr, acc) for the remainder's
// dot) and Q4_1's acc = fma(m, sx, acc).
template <int MR, bool Q4>
void tile(const Quantized& q, const void* w, const float* d, const float* m, const int32_t* qsum, int64_t t,
          int64_t m0, float* y, int64_t Np) {
  const int64_t B = q.B, Kp = q.Kp;
  v16 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = v16{};
  for (int64_t b = 0; b < B; ++b) {
    const int64_t tb = t * B + b;
    const v16 d16 = load(d + tb * R);
    v16 dot[MR], dot_r[MR];
    v16* dots[2] = {dot, dot_r};
    const int levels = q.fine ? 2 : 1;
    if constexpr (Q4) {
      const Q4Block blk = unpack_q4(static_cast<const uint8_t*>(w) + tb * 256);
      const int8_t* level[2] = {q.xq.data(), q.xr.data()};
      for (int l = 0; l < levels; ++l) {
        const int8_t* xs[MR];
        for (int i = 0; i < MR; ++i) xs[i] = level[l] + (m0 + i) * Kp + b * 32;
        dots_q4<MR>(blk, xs, dots[l]);
      }
    } else {
      const int8_t* wb = static_cast<const int8_t*>(w) + tb * 512;
#if defined(Q4_VNNI)
      using X = uint8_t;  // vpdpbusd: activations offset by 128
      const X* level[2] = {q.xu.data(), q.xru.data()};
#else
      using X = int8_t;
      const X* level[2] = {q.xq.data(), q.xr.data()};
#endif
      for (int l = 0; l < levels; ++l) {
        const X* xs[MR];
        for (int i = 0; i < MR; ++i) xs[i] = level[l] + (m0 + i) * Kp + b * 32;
        dots_q8<MR>(wb, xs, qsum + tb * R, dots[l]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      const int64_t rb = (m0 + i) * B + b;
      acc[i] = fma(dot[i], d16 * splat(q.dx[rb]), acc[i]);
      if (q.fine) acc[i] = fma(dot_r[i], d16 * splat(q.dr[rb]), acc[i]);
    }
    if constexpr (Q4) {
      const v16 m16 = load(m + tb * R);
      for (int i = 0; i < MR; ++i) acc[i] = fma(m16, splat(q.sx[(m0 + i) * B + b]), acc[i]);
    }
  }
  for (int i = 0; i < MR; ++i) store(y + (m0 + i) * Np + t * R, acc[i]);
}

template <bool Q4>
void run_tiles(const Quantized& q, const void* w, const float* d, const float* m, const int32_t* qsum, int64_t M,
               int64_t Np, float* y) {
  at::parallel_for(0, Np / R, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t m0 = 0; m0 < M; m0 += MC) {
        switch (std::min<int64_t>(MC, M - m0)) {
          case 1: tile<1, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          case 2: tile<2, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          case 3: tile<3, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          case 4: tile<4, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          case 5: tile<5, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          case 6: tile<6, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          case 7: tile<7, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
          default: tile<8, Q4>(q, w, d, m, qsum, t, m0, y, Np); break;
        }
      }
  });
}

at::Tensor finish(at::Tensor y, int64_t N, const c10::optional<at::Tensor>& bias) {
  if (y.size(1) != N) y = y.narrow(1, 0, N).contiguous();
  if (bias.has_value() && bias->defined()) y.add_(bias->to(at::kFloat));
  return y;
}

}  // namespace

// y [M, N] = x [M, K] times Q4_1 weights: w uint8 [tiles, Kp / 32, 256], d and m fp32 [tiles, Kp / 32, 16].
at::Tensor rows_linear_q4(const at::Tensor& x_, const at::Tensor& w, const at::Tensor& d, const at::Tensor& m,
                          int64_t N, const c10::optional<at::Tensor>& bias, bool fine) {
  const at::Tensor x = x_.to(at::kFloat).contiguous();
  TORCH_CHECK(x.dim() == 2 && w.dim() == 3 && w.scalar_type() == at::kByte && w.size(2) == 256 && w.is_contiguous() &&
              d.sizes() == m.sizes() && d.size(0) == w.size(0) && d.size(1) == w.size(1) && d.size(2) == R &&
              d.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat && d.is_contiguous() &&
              m.is_contiguous() && x.size(1) <= w.size(1) * 32 && N <= w.size(0) * R,
              "rows_linear_q4: x [M, K], w uint8 [tiles, K / 32, 256], d / m [tiles, K / 32, 16]");
  const int64_t M = x.size(0), Np = w.size(0) * R;
  const Quantized q = quantize(x, w.size(1) * 32, false, fine);
  at::Tensor y = at::empty({M, Np}, x.options());
  run_tiles<true>(q, w.data_ptr<uint8_t>(), d.data_ptr<float>(), m.data_ptr<float>(), nullptr, M, Np,
                  y.data_ptr<float>());
  return finish(y, N, bias);
}

namespace {

// y [M, N] = x [M, K] times Q8_0 weights: w int8 [tiles, Kp / 32, 512], d fp32 and qsum int32 [tiles, Kp / 32, 16].
at::Tensor rows_linear_q8x(const at::Tensor& x_, const at::Tensor& w, const at::Tensor& d, const at::Tensor& qsum,
                           int64_t N, const c10::optional<at::Tensor>& bias, bool fine) {
  const at::Tensor x = x_.to(at::kFloat).contiguous();
  TORCH_CHECK(x.dim() == 2 && w.dim() == 3 && w.scalar_type() == at::kChar && w.size(2) == 512 && w.is_contiguous() &&
              d.sizes() == qsum.sizes() && d.size(0) == w.size(0) && d.size(1) == w.size(1) && d.size(2) == R &&
              d.scalar_type() == at::kFloat && qsum.scalar_type() == at::kInt && d.is_contiguous() &&
              qsum.is_contiguous() && x.size(1) <= w.size(1) * 32 && N <= w.size(0) * R,
              "rows_linear_q8x: x [M, K], w int8 [tiles, K / 32, 512], d fp32 / qsum int32 [tiles, K / 32, 16]");
  const int64_t M = x.size(0), Np = w.size(0) * R;
#if defined(Q4_VNNI)
  const Quantized q = quantize(x, w.size(1) * 32, true, fine);
#else
  const Quantized q = quantize(x, w.size(1) * 32, false, fine);
#endif
  at::Tensor y = at::empty({M, Np}, x.options());
  run_tiles<false>(q, w.data_ptr<int8_t>(), d.data_ptr<float>(), nullptr, qsum.data_ptr<int32_t>(), M, Np,
                   y.data_ptr<float>());
  return finish(y, N, bias);
}

bool q4_vnni() {  // whether the integer dots run on AVX-512 VNNI here (else AVX2 or plain C: the same integers)
#if defined(Q4_VNNI)
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace refrag_rasd

TORCH_LIBRARY_FRAGMENT(refrag_rasd_invariant, m) {
  using namespace refrag_rasd;
  m.def("rows_linear_q4(Tensor x, Tensor w, Tensor d, Tensor m, int n, Tensor? bias, bool fine=True) -> Tensor",
        &rows_linear_q4);
  m.def("rows_linear_q8x(Tensor x, Tensor w, Tensor d, Tensor qsum, int n, Tensor? bias, bool fine=True) -> Tensor",
        &rows_linear_q8x);
  m.def("q4_vnni() -> bool", &q4_vnni);
}
