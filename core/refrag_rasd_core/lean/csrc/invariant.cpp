// Batch-invariant CPU kernels for the lean forward (refrag_rasd_core.lean.invariant).
//
// Every output value is computed by one thread, as one fixed sequence of float operations that depends only on
// that output's own inputs (its row of activations, its query and its keys in logical order), never on how many
// other rows share the call, how they are tiled, or where in the KV cache its keys sit. So a row of an M-row
// forward gives the same bits as the same row alone: a tree verify and a plain decoding step agree exactly.
// The 16-lane helpers (explicit lanes: the same arithmetic on AVX-512 and on AVX2) are in vec.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

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
  for (int64_t h = 0; h < G; ++h) {  // one head at a time: its DC accumulators stay in registers
    v16 o[DC] = {};
    const float* sh = s + h * L16;
    for (int64_t j = 0; j < L; ++j) {
      const float* vr = row(vbase, j);
      const v16 e = splat(sh[j]);
      for (int c = 0; c < DC; ++c) o[c] = fma(e, load(vr + 16 * c), o[c]);
    }
    for (int c = 0; c < DC; ++c) store(out + h * D + 16 * c, o[c] / splat(denom[h]));
  }
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

}  // namespace refrag_rasd

TORCH_LIBRARY(refrag_rasd_invariant, m) {
  using namespace refrag_rasd;
  m.def("rows_linear(Tensor x, Tensor w, Tensor? bias) -> Tensor", &rows_linear);
  m.def("attend(Tensor q, Tensor keys, Tensor values, int ctx, Tensor tail, Tensor tail_len, float scale) -> Tensor",
        &attend);
}
