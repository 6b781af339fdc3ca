// Batch-invariant CPU kernels for the lean forward (refrag_rasd_core.lean.invariant).
//
// Every output value is computed by one thread, as one fixed sequence of float operations that depends only on
// that output's own inputs (its row of activations, its query and its keys in logical order), never on how many
// other rows share the call, how they are tiled, or where in the KV cache its keys sit. So a row of an M-row
// forward gives the same bits as the same row alone: a tree verify and a plain decoding step agree exactly.
// The 16-lane helpers (explicit lanes: the same arithmetic on AVX-512 and on AVX2) are in vec.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "vec.h"

namespace refrag_rasd {
namespace {

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

constexpr int64_t MAX_GROUP = 8;  // query heads per key / value head
constexpr int64_t MAX_ROWS = 8;   // rows per work item (they share the context's key and value loads)

// One work item of attend(): the rows [0, n) for one key / value head. Row r has G query heads at q[r], reads
// L[r] keys in logical order (the ctx shared cache slots, then tail[r]'s slots) and writes out[r].
struct Item {
  const float* const* q;
  float* const* out;
  const int64_t* const* tail;
  const int64_t* L;
  int64_t n, G, ctx, L16, D;
  const float *kbase, *vbase;
  float sc;
  float* s;  // scores, then softmax numerators [n * G, L16]
  const float* key(const float* base, int64_t r, int64_t j) const {
    return base + (j < ctx ? j : tail[r][j - ctx]) * D;
  }
};

// Per (row, head) pair the arithmetic is fixed whatever else the item holds: a key's score is its DC chunks of
// q * k accumulated in order, then reduce16's tree, times the scale; softmax: the max, vexp, a 16-lane sum over
// the 16-key blocks of the row's own sequence, hsum; the output: the weighted values accumulated in key order,
// then divided by the sum. What the rows share is loads: a block of 16 context keys is read once for every pair,
// a context value row once for P pairs. (Free functions: as members, GCC kept the accumulators in memory.)

// Scores of rows [r0, r1) (all heads) over the 16 keys kr[], written at column j0.
template <int DC>
__attribute__((noinline)) void score_block(const Item& it, const float* const* kr, int64_t r0, int64_t r1,
                                           int64_t j0) {
  constexpr int64_t D = DC * 16;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t h = 0; h < it.G; ++h) {
      const float* qh = it.q[r] + h * D;
      v16 qv[DC];
      for (int c = 0; c < DC; ++c) qv[c] = load(qh + 16 * c);
      v16 acc[16];
      for (int64_t t = 0; t < 16; ++t) {
        v16 a = qv[0] * load(kr[t]);
        for (int c = 1; c < DC; ++c) a = fma(qv[c], load(kr[t] + 16 * c), a);
        acc[t] = a;
      }
      store(it.s + (r * it.G + h) * it.L16 + j0, reduce16(acc) * splat(it.sc));
    }
}

template <int DC>
void scores(const Item& it) {
  static const float zeros[DC * 16] = {};
  const int64_t shared = it.ctx / 16 * 16;  // blocks every row reads from the same slots
  const float* kr[16];
  for (int64_t j0 = 0; j0 < shared; j0 += 16) {
    for (int64_t t = 0; t < 16; ++t) kr[t] = it.kbase + (j0 + t) * it.D;
    score_block<DC>(it, kr, 0, it.n, j0);
  }
  for (int64_t r = 0; r < it.n; ++r)
    for (int64_t j0 = shared; j0 < it.L[r]; j0 += 16) {
      for (int64_t t = 0; t < 16; ++t) kr[t] = j0 + t < it.L[r] ? it.key(it.kbase, r, j0 + t) : zeros;
      score_block<DC>(it, kr, r, r + 1, j0);
    }
}

// Softmax numerators in place, and each pair's denominator.
void softmax(const Item& it, float* denom) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  for (int64_t p = 0; p < it.n * it.G; ++p) {
    const int64_t L = it.L[p / it.G], L16 = (L + 15) / 16 * 16;
    float* sp = it.s + p * it.L16;
    for (int64_t j = L; j < L16; ++j) sp[j] = -inf;
    v16 mv = splat(-inf);
    for (int64_t j = 0; j < L16; j += 16) {
      const v16 x = load(sp + j);
      mv = x > mv ? x : mv;
    }
    float mx = -inf;  // a max is exact in any order
    for (int i = 0; i < 16; ++i) mx = mv[i] > mx ? mv[i] : mx;
    v16 sum = v16{};
    for (int64_t j = 0; j < L16; j += 16) {
      const v16 e = vexp(load(sp + j) - splat(mx));
      store(sp + j, e);
      sum += e;
    }
    denom[p] = hsum(sum);
  }
}

// The outputs of pairs [p0, p0 + P): the context's values, each row read once for the P pairs, then each pair's tail.
template <int DC, int P>
__attribute__((noinline)) void weigh_values(const Item& it, int64_t p0, const float* denom) {
  constexpr int64_t D = DC * 16;
  const float* sb = it.s + p0 * it.L16;
  const int64_t stride = it.L16, ctx = it.ctx;
  const float* vbase = it.vbase;
  v16 o[P][DC] = {};
  for (int64_t j = 0; j < ctx; ++j) {
    const float* vr = vbase + j * D;
    v16 vv[DC];
    for (int c = 0; c < DC; ++c) vv[c] = load(vr + 16 * c);
    for (int i = 0; i < P; ++i) {
      const v16 e = splat(sb[i * stride + j]);
      for (int c = 0; c < DC; ++c) o[i][c] = fma(e, vv[c], o[i][c]);
    }
  }
  for (int i = 0; i < P; ++i) {
    const int64_t r = (p0 + i) / it.G, h = (p0 + i) % it.G;
    for (int64_t j = ctx; j < it.L[r]; ++j) {
      const float* vr = it.key(vbase, r, j);
      const v16 e = splat(sb[i * stride + j]);
      for (int c = 0; c < DC; ++c) o[i][c] = fma(e, load(vr + 16 * c), o[i][c]);
    }
    for (int c = 0; c < DC; ++c) store(it.out[r] + h * D + 16 * c, o[i][c] / splat(denom[p0 + i]));
  }
}

template <int DC>
void run_item(const Item& it) {
  scores<DC>(it);
  float denom[MAX_ROWS * MAX_GROUP];
  softmax(it, denom);
#if defined(__AVX512F__)
  constexpr int WIDE = DC <= 4 ? 6 : 3, MID = DC <= 4 ? 3 : 1;  // P x DC accumulators within 32 registers
#else
  constexpr int WIDE = DC <= 2 ? 4 : 2, MID = 1;  // AVX2: 16 registers, a v16 in two
#endif
  const int64_t pairs = it.n * it.G;
  int64_t p = 0;
  for (; p + WIDE <= pairs; p += WIDE) weigh_values<DC, WIDE>(it, p, denom);
  for (; p + MID <= pairs; p += MID) weigh_values<DC, MID>(it, p, denom);
  for (; p < pairs; ++p) weigh_values<DC, 1>(it, p, denom);
}

}  // namespace

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
  // items: (key / value head, a block of rows); rows per item fixed by n only, never by what a row computes
  const int64_t rb = std::max<int64_t>(1, std::min<int64_t>(MAX_ROWS, n / 2)), blocks = (n + rb - 1) / rb;
  at::parallel_for(0, KV * blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> s;
    for (int64_t item = b0; item < b1; ++item) {
      const int64_t g = item / blocks, r0 = (item % blocks) * rb, nr = std::min(rb, n - r0);
      const float* qs[MAX_ROWS];
      float* os[MAX_ROWS];
      const int64_t* ts[MAX_ROWS];
      int64_t Ls[MAX_ROWS], L16 = 16;
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = r0 + r;
        qs[r] = qp + (i * H + g * G) * D;
        os[r] = op + (i * H + g * G) * D;
        ts[r] = tp + i * T;
        Ls[r] = ctx + lp[i];
        L16 = std::max(L16, (Ls[r] + 15) / 16 * 16);
      }
      s.resize(nr * G * L16);
      const float *kb = kp + g * ks, *vb = vp + g * vs;
      const Item it{qs, os, ts, Ls, nr, G, ctx, L16, D, kb, vb, sc, s.data()};
      switch (D / 16) {
        case 1: run_item<1>(it); break;
        case 2: run_item<2>(it); break;
        case 4: run_item<4>(it); break;
        case 8: run_item<8>(it); break;
        default: TORCH_CHECK(false, "attend: head_dim ", D, " not in 16, 32, 64, 128");
      }
    }
  });
  return out;
}

}  // namespace refrag_rasd

TORCH_LIBRARY(refrag_rasd_invariant, m) {
  using namespace refrag_rasd;
  m.def("rows_linear(Tensor x, Tensor w, Tensor? bias) -> Tensor", &rows_linear);
  m.def("attend(Tensor q, Tensor keys, Tensor values, int ctx, Tensor tail, Tensor tail_len, float scale) -> Tensor",
        &attend);
}
