// Decode-step attention over the KV cache (dschat/sdk/nn/decode_attention.h). Three passes per layer:
//   scores[b, h, s] = scale * q[b, h] . k[b, h / G, s] + bias[b, h, s]     (fp32, one task per (b, kv head))
//   probs = at::softmax(scores)                                            (ATen's vectorized kernel)
//   out[b, h] = sum_s probs[b, h, s] v[b, h / G, s]                        (fp32 sums, one task per (b, kv head))
// Each task's keys (S x D) stay in L1/L2 while its G query heads read them, so the cache streams from DRAM once.
// Compiled -fopenmp (sdk/CMakeLists.txt) so that at::parallel_for runs in parallel, like skinny_linear.cpp.
#include "dschat/sdk/nn/decode_attention.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include "dschat/sdk/nn/skinny_linear.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DSCHAT_DECODE_AVX512 1
#endif

namespace dschat {

namespace {

using BF16 = c10::BFloat16;

// The CPU checks are skinny_linear's: one place says what "AVX-512" and "AVX-512-BF16" mean.
bool has_avx512() { return skinny_isa_supported(SkinnyIsa::kAvx512); }
bool has_avx512_bf16() { return skinny_isa_supported(SkinnyIsa::kAvx512Bf16); }

template <typename T>
float dot_scalar(const T* a, const T* b, int64_t D) {
  float sum = 0.0f;
  for (int64_t d = 0; d < D; ++d) sum += static_cast<float>(a[d]) * static_cast<float>(b[d]);
  return sum;
}

template <typename T>
void axpy_scalar(float p, const T* v, float* acc, int64_t D) {
  for (int64_t d = 0; d < D; ++d) acc[d] += p * static_cast<float>(v[d]);
}

#ifdef DSCHAT_DECODE_AVX512
__attribute__((target("avx512f,avx512bw,avx512bf16"))) float dot_avx512_bf16(const BF16* a, const BF16* b,
                                                                             int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  int64_t d = 0;
  for (; d + 32 <= D; d += 32)
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a + d), (__m512bh)_mm512_loadu_si512(b + d));
  if (d < D) {
    const auto mask = static_cast<__mmask32>((uint64_t{1} << (D - d)) - 1);
    acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(mask, a + d),
                           (__m512bh)_mm512_maskz_loadu_epi16(mask, b + d));
  }
  return _mm512_reduce_add_ps(acc);
}

// 16 bf16 widened to fp32 in their own order (a zero-extend and a shift: exact).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const BF16* p, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) float dot_avx512(const T* a, const T* b, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) {
    const auto mask = static_cast<__mmask16>(D - d >= 16 ? 0xFFFF : (1u << (D - d)) - 1);
    acc = _mm512_fmadd_ps(load16(a + d, mask), load16(b + d, mask), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void axpy_avx512(float p, const T* v, float* acc, int64_t D) {
  const __m512 pv = _mm512_set1_ps(p);
  for (int64_t d = 0; d < D; d += 16) {
    const auto mask = static_cast<__mmask16>(D - d >= 16 ? 0xFFFF : (1u << (D - d)) - 1);
    const __m512 sum = _mm512_fmadd_ps(pv, load16(v + d, mask), _mm512_maskz_loadu_ps(mask, acc + d));
    _mm512_mask_storeu_ps(acc + d, mask, sum);
  }
}
#endif

template <typename T>
float dot(const T* a, const T* b, int64_t D) {
#ifdef DSCHAT_DECODE_AVX512
  if constexpr (std::is_same_v<T, BF16>) {
    if (has_avx512_bf16()) return dot_avx512_bf16(a, b, D);
  }
  if (has_avx512()) return dot_avx512<T>(a, b, D);
#endif
  return dot_scalar<T>(a, b, D);
}

template <typename T>
void axpy(float p, const T* v, float* acc, int64_t D) {
#ifdef DSCHAT_DECODE_AVX512
  if (has_avx512()) return axpy_avx512<T>(p, v, acc, D);
#endif
  axpy_scalar<T>(p, v, acc, D);
}

template <typename T>
at::Tensor run(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias,
               double scale) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = keys.size(1), S = keys.size(2);
  const int64_t G = H / Hkv;
  const auto bias_f = bias.to(at::kFloat).expand({B, H, 1, S});
  auto scores = at::empty({B, H, S}, q.options().dtype(at::kFloat));
  const T* qp = q.data_ptr<T>();
  const T* kp = keys.data_ptr<T>();
  const T* vp = values.data_ptr<T>();
  const float* bp = bias_f.data_ptr<float>();
  float* sp = scores.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  const int64_t ks0 = keys.stride(0), ks1 = keys.stride(1), ks2 = keys.stride(2);
  const int64_t vs0 = values.stride(0), vs1 = values.stride(1), vs2 = values.stride(2);
  const int64_t bs0 = bias_f.stride(0), bs1 = bias_f.stride(1), bs3 = bias_f.stride(3);
  const auto fscale = static_cast<float>(scale);
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, kvh = task % Hkv;
      const T* k = kp + b * ks0 + kvh * ks1;
      for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
        const T* qh = qp + b * qs0 + h * qs1;
        const float* bias_row = bp + b * bs0 + h * bs1;
        float* out = sp + (b * H + h) * S;
        for (int64_t s = 0; s < S; ++s) out[s] = fscale * dot<T>(qh, k + s * ks2, D) + bias_row[s * bs3];
      }
    }
  });
  const auto probs = at::softmax(scores, -1);
  const float* pp = probs.data_ptr<float>();
  auto out = at::empty({B, H, 1, D}, q.options());
  T* op = out.data_ptr<T>();
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(D));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, kvh = task % Hkv;
      const T* v = vp + b * vs0 + kvh * vs1;
      for (int64_t h = kvh * G; h < (kvh + 1) * G; ++h) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        const float* p = pp + (b * H + h) * S;
        for (int64_t s = 0; s < S; ++s) {
          if (p[s] != 0.0f) axpy<T>(p[s], v + s * vs2, acc.data(), D);  // masked keys: exp(-inf) = 0
        }
        T* o = op + (b * H + h) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<T>(acc[static_cast<size_t>(d)]);
      }
    }
  });
  return out;
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const at::Tensor& bias, double scale) {
  TORCH_CHECK(q.dim() == 4 && keys.dim() == 4 && values.dim() == 4 && bias.dim() == 4,
              "decode_attention: q, keys, values and bias must be 4-D");
  TORCH_CHECK(q.device().is_cpu() && keys.device().is_cpu() && values.device().is_cpu() && bias.device().is_cpu(),
              "decode_attention: CPU tensors only");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "decode_attention: fp32 or bf16, got ", dtype);
  TORCH_CHECK(keys.scalar_type() == dtype && values.scalar_type() == dtype,
              "decode_attention: q, keys and values must share a dtype");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = keys.size(1), S = keys.size(2);
  TORCH_CHECK(q.size(2) == 1, "decode_attention: one query position, got ", q.size(2));
  TORCH_CHECK(keys.size(0) == B && values.sizes() == keys.sizes() && keys.size(3) == D,
              "decode_attention: keys ", keys.sizes(), " and values ", values.sizes(), " do not match q ", q.sizes());
  TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "decode_attention: ", H, " heads are not a multiple of ", Hkv,
              " key/value heads");
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1, "decode_attention: keys and values need unit stride "
              "along the head dimension");
  TORCH_CHECK(bias.size(0) == B && (bias.size(1) == 1 || bias.size(1) == H) && bias.size(2) == 1 &&
                  bias.size(3) == S,
              "decode_attention: bias ", bias.sizes(), " does not cover ", B, " x ", H, " heads x ", S, " keys");
  const auto qc = q.stride(3) == 1 ? q : q.contiguous();
  if (dtype == at::kFloat) return run<float>(qc, keys, values, bias, scale);
  return run<BF16>(qc, keys, values, bias, scale);
}

bool use_decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                          const at::Tensor& bias) {
  if (!has_avx512() || !q.defined() || !keys.defined() || !values.defined() || !bias.defined()) return false;
  if (!q.device().is_cpu() || !keys.device().is_cpu() || !values.device().is_cpu() || !bias.device().is_cpu())
    return false;
  if (q.dim() != 4 || q.size(2) != 1 || keys.dim() != 4 || values.dim() != 4 || bias.dim() != 4) return false;
  const auto dtype = q.scalar_type();
  if ((dtype != at::kFloat && dtype != at::kBFloat16) || keys.scalar_type() != dtype ||
      values.scalar_type() != dtype)
    return false;
  if (keys.stride(3) != 1 || values.stride(3) != 1 || keys.size(1) == 0 || q.size(1) % keys.size(1) != 0)
    return false;
  if (bias.size(2) != 1 || bias.size(3) != keys.size(2) || (bias.size(1) != 1 && bias.size(1) != q.size(1)))
    return false;
  return !(at::GradMode::is_enabled() && (q.requires_grad() || keys.requires_grad() || values.requires_grad()));
}

}  // namespace dschat
