// A LLaMA decoder's layers in one call, for forwards of up to 64 rows whose linears are all Q4_1
// (refrag_rasd_core.lean.runner's fused path).
//
// Per layer, as the lean forward's Python loop: RMSNorm, the fused QKV linear, rotary, the new keys and values
// written into the cache, attention over each row's keys in logical order (attend), the output projection and
// residual, RMSNorm, the fused gate/up linear, SiLU(gate) * up, the down projection and residual. The linears and
// attention are the batch-invariant kernels; every other operation is per row and elementwise, or a reduction over
// one row in a fixed order, so a row gives the same bits alone and among any number of rows. One call per forward
// instead of ~15 tensor operations per layer from Python (about 5 ms per decoding step on a 2-core CPU).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "vec.h"

namespace refrag_rasd {
namespace {

// transformers' LlamaRMSNorm per row: x / sqrt(mean(x^2) + eps), then times the weight (the mean in a fixed order).
void rms_norm(const float* x, const float* w, int64_t n, int64_t H, double eps, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * H;
    const float inv = 1.0f / std::sqrt(dot(xr, xr, H) / static_cast<float>(H) + static_cast<float>(eps));
    float* o = out + i * H;
    for (int64_t k = 0; k < H; ++k) o[k] = w[k] * (xr[k] * inv);
  }
}

// out = x * cos + rotate_half(x) * sin for each of `heads` heads of one row (cos / sin: the row's [D]).
void rotate(float* x, int64_t heads, int64_t D, const float* cos, const float* sin) {
  const int64_t half = D / 2;
  float tmp[256];
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * D;
    for (int64_t j = 0; j < half; ++j) tmp[j] = v[j] * cos[j] - v[j + half] * sin[j];
    for (int64_t j = half; j < D; ++j) tmp[j] = v[j] * cos[j] + v[j - half] * sin[j];
    std::memcpy(v, tmp, D * sizeof(float));
  }
}

// silu(g) * u, with silu(g) = g * sigmoid(g) from vexp of -|g| (exact to ~1 ulp of float's exp).
void swiglu(const float* gu, int64_t n, int64_t inter, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float *g = gu + i * 2 * inter, *u = g + inter;
    float* o = out + i * inter;
    int64_t k = 0;
    for (; k + 16 <= inter; k += 16) {
      const v16 gv = load(g + k);
      const vi16 neg = gv < splat(0.0f);
      const v16 e = vexp(neg ? gv : -gv);  // exp(-|g|)
      const v16 one = splat(1.0f);
      const v16 sig = neg ? e / (one + e) : one / (one + e);
      store(o + k, gv * sig * load(u + k));
    }
    for (; k < inter; ++k) {
      const float e = std::exp(-std::fabs(g[k]));
      const float sig = g[k] < 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
      o[k] = g[k] * sig * u[k];
    }
  }
}

}  // namespace

// x [n, H] through every layer. weights: 14 tensors per layer (attn_norm, qkv w / d / m, o w / d / m, mlp_norm,
// gate_up w / d / m, down w / d / m: rows_linear_q4's layout); cos / sin [n, D]; keys / values [layers, KV, cap, D]
// (rows start .. start + n - 1 are written); tail / tail_len: attend's. Returns x after the last layer.
at::Tensor decoder_layers(const at::Tensor& x_, at::TensorList weights, const at::Tensor& cos_, const at::Tensor& sin_,
                          const at::Tensor& keys, const at::Tensor& values, int64_t start, const at::Tensor& tail,
                          const at::Tensor& tail_len, int64_t heads, int64_t kv_heads, int64_t inter, double eps,
                          double scale) {
  at::Tensor x = x_.to(at::kFloat).contiguous().clone();
  const at::Tensor cos = cos_.to(at::kFloat).contiguous(), sin = sin_.to(at::kFloat).contiguous();
  const int64_t n = x.size(0), H = x.size(1), L = keys.size(0), D = keys.size(3);
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == 14 * L, "decoder_layers: 14 weight tensors per layer");
  TORCH_CHECK(keys.scalar_type() == at::kFloat && keys.is_contiguous() && values.is_contiguous() &&
              keys.sizes() == values.sizes() && keys.size(1) == kv_heads && start + n <= keys.size(2) &&
              cos.size(0) == n && cos.size(1) == D && sin.sizes() == cos.sizes() && D <= 256 && D % 2 == 0,
              "decoder_layers: keys / values [layers, KV, cap, D] fp32 with room for the rows, cos / sin [n, D]");
  const int64_t qkw = (heads + 2 * kv_heads) * D, cap = keys.size(2);
  at::Tensor h = at::empty({n, H}, x.options()), m = at::empty({n, inter}, x.options());
  float *xp = x.data_ptr<float>(), *hp = h.data_ptr<float>();
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* w = &weights[14 * l];
    rms_norm(xp, w[0].data_ptr<float>(), n, H, eps, hp);
    at::Tensor qkv = rows_linear_q4(h, w[1], w[2], w[3], qkw, c10::nullopt, true);
    float* qp = qkv.data_ptr<float>();
    at::Tensor k_l = keys[l], v_l = values[l];
    float *kc = k_l.data_ptr<float>(), *vc = v_l.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      float* row = qp + i * qkw;
      rotate(row, heads + kv_heads, D, cos.data_ptr<float>() + i * D, sin.data_ptr<float>() + i * D);
      for (int64_t g = 0; g < kv_heads; ++g) {
        std::memcpy(kc + (g * cap + start + i) * D, row + (heads + g) * D, D * sizeof(float));
        std::memcpy(vc + (g * cap + start + i) * D, row + (heads + kv_heads + g) * D, D * sizeof(float));
      }
    }
    const at::Tensor q = qkv.narrow(1, 0, heads * D).view({n, heads, D});
    const at::Tensor a = attend(q, k_l, v_l, start, tail, tail_len, scale).view({n, heads * D});
    const at::Tensor o = rows_linear_q4(a, w[4], w[5], w[6], H, c10::nullopt, true);
    const float* op = o.data_ptr<float>();
    for (int64_t k = 0; k < n * H; ++k) xp[k] = xp[k] + op[k];
    rms_norm(xp, w[7].data_ptr<float>(), n, H, eps, hp);
    const at::Tensor gu = rows_linear_q4(h, w[8], w[9], w[10], 2 * inter, c10::nullopt, true);
    swiglu(gu.data_ptr<float>(), n, inter, m.data_ptr<float>());
    const at::Tensor dn = rows_linear_q4(m, w[11], w[12], w[13], H, c10::nullopt, true);
    const float* dp = dn.data_ptr<float>();
    for (int64_t k = 0; k < n * H; ++k) xp[k] = xp[k] + dp[k];
  }
  return x;
}

}  // namespace refrag_rasd

TORCH_LIBRARY_FRAGMENT(refrag_rasd_invariant, m) {
  m.def("decoder_layers(Tensor x, Tensor[] weights, Tensor cos, Tensor sin, Tensor(a!) keys, Tensor(b!) values, "
        "int start, Tensor tail, Tensor tail_len, int heads, int kv_heads, int inter, float eps, float scale) -> Tensor",
        &refrag_rasd::decoder_layers);
}
