// RMSNorm and rotary embeddings of a decode step in one AVX-512 pass each (dschat/sdk/nn/decode_ops.h).
// Intermediates HF keeps in the model dtype are rounded to it here too: vcvtneps2bf16 rounds to nearest even
// as c10::BFloat16 does (it also flushes denormal inputs, which activations never are).
#include "dschat/sdk/nn/decode_ops.h"

#include <ATen/Functions.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include "dschat/sdk/nn/skinny_linear.h"
#include "avx512_exp.h"

#include <cmath>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DSCHAT_DECODE_OPS 1
#define DSCHAT_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#endif

namespace dschat {

namespace {

using BF16 = c10::BFloat16;

// A decode step's size: B x H x D for rotary, B x hidden for the norm, with room to spare. Past it (prefill,
// training batches) LibTorch's multi-threaded kernels are the better choice.
constexpr int64_t kMaxElements = 64 * 4096;

bool cpu_ok() { return skinny_isa_supported(SkinnyIsa::kAvx512Bf16); }  // skinny_linear's CPU check

bool applies(const at::Tensor& x, std::initializer_list<const at::Tensor*> others) {
  if (!cpu_ok() || !x.defined() || !x.device().is_cpu() || x.numel() > kMaxElements) return false;
  const auto dtype = x.scalar_type();
  if (dtype != at::kFloat && dtype != at::kBFloat16) return false;
  bool grad = x.requires_grad();
  for (const auto* t : others) {
    if (!t->defined() || !t->device().is_cpu() || t->scalar_type() != dtype) return false;
    grad = grad || t->requires_grad();
  }
  return !(grad && at::GradMode::is_enabled());
}

#ifdef DSCHAT_DECODE_OPS
DSCHAT_AVX512_BF16 inline __m512 widen(__m256i bf16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
}
DSCHAT_AVX512_BF16 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
DSCHAT_AVX512_BF16 inline __m512 load16(const BF16* p) {
  return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
DSCHAT_AVX512_BF16 inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
DSCHAT_AVX512_BF16 inline void store16(BF16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}
// v rounded to T and back to fp32: what keeping an intermediate in T does.
template <typename T>
DSCHAT_AVX512_BF16 inline __m512 round_to(__m512 v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return widen(reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

// HF: x32 = x.float(); normed = x32 * rsqrt(x32.pow(2).mean(-1) + eps); weight * normed.to(dtype).
template <typename T>
DSCHAT_AVX512_BF16 void rms_rows(const T* x, const T* w, T* out, int64_t rows, int64_t D, float eps) {
  for (int64_t r = 0; r < rows; ++r, x += D, out += D) {
    __m512 squares = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) {
      const __m512 v = load16(x + d);
      squares = _mm512_fmadd_ps(v, v, squares);
    }
    const float scale = 1.0f / std::sqrt(_mm512_reduce_add_ps(squares) / static_cast<float>(D) + eps);
    const __m512 s = _mm512_set1_ps(scale);
    for (int64_t d = 0; d < D; d += 16)
      store16(out + d, _mm512_mul_ps(load16(w + d), round_to<T>(_mm512_mul_ps(load16(x + d), s))));
  }
}

// HF: x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x2, x1); each product and the sum rounded to T.
template <typename T>
DSCHAT_AVX512_BF16 void rotary_rows(const T* x, const T* cos, const T* sin, T* out, int64_t B, int64_t H,
                                    int64_t L, int64_t D, int64_t s0, int64_t s1, int64_t s2) {
  const int64_t half = D / 2;
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));  // -x: flip the sign bit (exact)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < L; ++t) {
        const T* row = x + b * s0 + h * s1 + t * s2;
        const T* c = cos + (b * L + t) * D;
        const T* s = sin + (b * L + t) * D;
        T* o = out + ((b * H + h) * L + t) * D;
        for (int64_t d = 0; d < half; d += 16) {
          const __m512 x1 = load16(row + d), x2 = load16(row + d + half);
          const __m512 neg_x2 = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x2), sign));
          store16(o + d, _mm512_add_ps(round_to<T>(_mm512_mul_ps(x1, load16(c + d))),
                                       round_to<T>(_mm512_mul_ps(neg_x2, load16(s + d)))));
          store16(o + d + half, _mm512_add_ps(round_to<T>(_mm512_mul_ps(x2, load16(c + d + half))),
                                              round_to<T>(_mm512_mul_ps(x1, load16(s + d + half)))));
        }
      }
}

// HF's SwiGLU: silu(gate) * up, silu(g) = g / (1 + exp(-g)) in fp32 rounded to T, then the product rounded to T.
template <typename T>
DSCHAT_AVX512_BF16 void silu_mul_rows(const T* gate, const T* up, T* out, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 g = load16(gate + i);
    const __m512 neg_g = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), sign));
    const __m512 silu = round_to<T>(_mm512_div_ps(g, _mm512_add_ps(one, detail::exp16(neg_g))));
    store16(out + i, _mm512_mul_ps(silu, load16(up + i)));
  }
}
#endif

template <typename T>
at::Tensor silu_mul_as(const at::Tensor& gate, const at::Tensor& up) {
  auto out = at::empty_like(gate);
#ifdef DSCHAT_DECODE_OPS
  silu_mul_rows<T>(gate.data_ptr<T>(), up.data_ptr<T>(), out.data_ptr<T>(), gate.numel());
#endif
  return out;
}

template <typename T>
at::Tensor rms_norm_as(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto xc = x.contiguous();
  auto wc = weight.contiguous();
  auto out = at::empty_like(xc);
  const int64_t D = x.size(-1);
#ifdef DSCHAT_DECODE_OPS
  rms_rows<T>(xc.data_ptr<T>(), wc.data_ptr<T>(), out.data_ptr<T>(), x.numel() / D, D, static_cast<float>(eps));
#endif
  return out;
}

template <typename T>
at::Tensor rotary_as(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  auto cc = cos.contiguous(), sc = sin.contiguous();
  auto out = at::empty(x.sizes(), x.options());
#ifdef DSCHAT_DECODE_OPS
  rotary_rows<T>(x.data_ptr<T>(), cc.data_ptr<T>(), sc.data_ptr<T>(), out.data_ptr<T>(), x.size(0), x.size(1),
                 x.size(2), x.size(3), x.stride(0), x.stride(1), x.stride(2));
#endif
  return out;
}

}  // namespace

at::Tensor rms_norm_decode(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (!applies(x, {&weight}) || x.dim() < 1 || weight.dim() != 1) return {};
  const int64_t D = x.size(-1);
  if (D == 0 || D % 16 != 0 || weight.size(0) != D) return {};
  return x.scalar_type() == at::kFloat ? rms_norm_as<float>(x, weight, eps) : rms_norm_as<BF16>(x, weight, eps);
}

at::Tensor silu_mul_decode(const at::Tensor& gate, const at::Tensor& up) {
  if (!applies(gate, {&up}) || gate.sizes() != up.sizes() || !gate.is_contiguous() || !up.is_contiguous())
    return {};
  if (gate.numel() % 16 != 0) return {};
  return gate.scalar_type() == at::kFloat ? silu_mul_as<float>(gate, up) : silu_mul_as<BF16>(gate, up);
}

at::Tensor rotary_decode(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (!applies(x, {&cos, &sin}) || x.dim() != 4 || cos.dim() != 3 || cos.sizes() != sin.sizes()) return {};
  const int64_t D = x.size(3);
  if (D == 0 || D % 32 != 0 || x.stride(3) != 1) return {};
  if (cos.size(0) != x.size(0) || cos.size(1) != x.size(2) || cos.size(2) != D) return {};
  return x.scalar_type() == at::kFloat ? rotary_as<float>(x, cos, sin) : rotary_as<BF16>(x, cos, sin);
}

}  // namespace dschat
