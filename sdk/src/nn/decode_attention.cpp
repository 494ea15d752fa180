// Decode-step attention over the KV cache (dschat/sdk/nn/decode_attention.h). Per (batch row, kv head) task:
//   scores[h, s] = scale * q[b, h] . k[b, h / G, s] + bias[b, h, s]        (fp32; 16 positions per reduction)
//   probs[h] = softmax(scores[h])                                          (in the task's buffer, exp16)
//   out[b, h] = sum_s probs[h, s] v[b, h / G, s]                           (fp32 sums held in registers)
// all in one parallel region, the bias read in its own dtype. Three regions with at::softmax and a bias converted
// to fp32 between them cost ~15 us a layer outside the two loops (SmolLM2-135M bf16, batch 8, LibTorch's
// profiler, Zen 4); with the fused SwiGLU product and greedy pick, batch-8 decode went 488 -> 529 tok/s.
// A task is one (batch row, kv head) and its G query heads, whose keys and values (S x D) stay in L1/L2 while
// they read them, so the cache streams from DRAM once; at batch 1 a task is one query head, so that every thread
// has work. Against one horizontal sum per q.k and one load-add-store of the sums per value row (the previous
// loops), SmolLM2-135M bf16 with 104 cached keys, 2 threads (Zen 5, best of 300 warm calls): batch 8 74 -> 30-49 us
// per layer, batch 1 31 -> 12-15 us.
// Compiled -fopenmp (sdk/CMakeLists.txt) so that at::parallel_for runs in parallel, like skinny_linear.cpp.
#include "dschat/sdk/nn/decode_attention.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include "dschat/sdk/nn/skinny_linear.h"
#include "avx512_exp.h"
#include "avx512_sum16.h"

#include <algorithm>
#include <cmath>
#include <limits>
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
bool has_avx512() {
  static const bool yes = skinny_isa_supported(SkinnyIsa::kAvx512);
  return yes;
}
bool has_avx512_bf16() {
  static const bool yes = skinny_isa_supported(SkinnyIsa::kAvx512Bf16);
  return yes;
}

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
// 16 bf16 widened to fp32 in their own order (a zero-extend and a shift: exact).
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const BF16* p, __mmask16 mask) {
  const __m256i raw = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const float* p, __mmask16 mask) {
  return _mm512_maskz_loadu_ps(mask, p);
}
inline __mmask16 mask16(int64_t left) {
  return static_cast<__mmask16>(left >= 16 ? 0xFFFF : left <= 0 ? 0 : (1u << left) - 1);
}

// q . k as a vector of partial sums (its lanes add up to the dot product), D elements. The target names
// avx512bf16 for both forms; the fp32 form (kBf16Dot false, also what AVX-512F CPUs without BF16 run) has no
// bf16 conversion for the compiler to emit an AVX-512-BF16 instruction for.
template <typename T, bool kBf16Dot>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline __m512 partial_dot(
    const T* q, const T* k, int64_t D) {
  __m512 acc = _mm512_setzero_ps();
  if constexpr (kBf16Dot) {  // vdpbf16ps: 32 exact bf16 products per instruction, paired into fp32 lanes
    for (int64_t d = 0; d < D; d += 32) {
      const auto mask = static_cast<__mmask32>(D - d >= 32 ? ~0u : (uint64_t{1} << (D - d)) - 1);
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(mask, q + d),
                             (__m512bh)_mm512_maskz_loadu_epi16(mask, k + d));
    }
  } else {
    for (int64_t d = 0; d < D; d += 16) {
      const auto mask = mask16(D - d);
      acc = _mm512_fmadd_ps(load16(q + d, mask), load16(k + d, mask), acc);
    }
  }
  return acc;
}

// scores[s] = scale * q . k[s] + bias[s] for one query head: 16 positions at a time, their partial-sum vectors
// reduced together by one transpose tree (sum16) rather than one horizontal sum per position.
template <typename T, bool kBf16Dot, typename Bias>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void scores_avx512(
    const T* q, const T* k, int64_t k_stride, int64_t S, int64_t D, float scale, const Bias* bias,
    int64_t bias_stride, float* out) {
  const __m512 scale_v = _mm512_set1_ps(scale);
  for (int64_t s0 = 0; s0 < S; s0 += 16) {
    const int64_t n = std::min<int64_t>(16, S - s0);
    __m512 acc[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j)
      acc[j] = j < n ? partial_dot<T, kBf16Dot>(q, k + (s0 + j) * k_stride, D) : _mm512_setzero_ps();
    const __m512 sums = _mm512_mul_ps(detail::sum16(acc), scale_v);
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, sums);
    for (int64_t j = 0; j < n; ++j) out[s0 + j] = lanes[j] + static_cast<float>(bias[(s0 + j) * bias_stride]);
  }
}

// p = softmax(p) over S scores, in place: max, exp(p - max) and its sum, then one multiply by 1 / sum.
__attribute__((target("avx512f"))) void softmax_avx512(float* p, int64_t S) {
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 max_v = lowest;  // lanes past S keep -inf, so they never raise the max
  for (int64_t s = 0; s < S; s += 16)
    max_v = _mm512_max_ps(max_v, _mm512_mask_loadu_ps(lowest, mask16(S - s), p + s));
  max_v = _mm512_set1_ps(_mm512_reduce_max_ps(max_v));
  __m512 sum_v = _mm512_setzero_ps();
  for (int64_t s = 0; s < S; s += 16) {
    const __mmask16 m = mask16(S - s);
    const __m512 e = detail::exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p + s), max_v));
    _mm512_mask_storeu_ps(p + s, m, e);
    sum_v = _mm512_mask_add_ps(sum_v, m, sum_v, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum_v));
  for (int64_t s = 0; s < S; s += 16) {
    const __mmask16 m = mask16(S - s);
    _mm512_mask_storeu_ps(p + s, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + s), inv));
  }
}

// out[h] = sum_s p[h][s] v[s] for up to 4 heads that share one value head: each v[s] is loaded (and widened)
// once for all of them, and the sums stay in registers, 64 elements of D at a time.
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void weighted_values_avx512(
    const float* const* p, int heads, const T* v, int64_t v_stride, int64_t S, int64_t D, float* const* out) {
  for (int64_t d0 = 0; d0 < D; d0 += 64) {
    const __mmask16 masks[4] = {mask16(D - d0), mask16(D - d0 - 16), mask16(D - d0 - 32), mask16(D - d0 - 48)};
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int h = 0; h < 4; ++h)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) acc[h][c] = _mm512_setzero_ps();
    for (int64_t s = 0; s < S; ++s) {
      __m512 vv[4];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) vv[c] = load16(v + s * v_stride + d0 + 16 * c, masks[c]);
#pragma GCC unroll 4
      for (int h = 0; h < 4; ++h) {
        if (h >= heads) break;
        const __m512 ph = _mm512_set1_ps(p[h][s]);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) acc[h][c] = _mm512_fmadd_ps(ph, vv[c], acc[h][c]);
      }
    }
    for (int h = 0; h < heads; ++h)
      for (int c = 0; c < 4; ++c) _mm512_mask_storeu_ps(out[h] + d0 + 16 * c, masks[c], acc[h][c]);
  }
}
#endif

template <typename T, typename Bias>
void scores_row(const T* q, const T* k, int64_t k_stride, int64_t S, int64_t D, float scale, const Bias* bias,
                int64_t bias_stride, float* out) {
#ifdef DSCHAT_DECODE_AVX512
  if constexpr (std::is_same_v<T, BF16>) {
    if (has_avx512_bf16()) return scores_avx512<T, true>(q, k, k_stride, S, D, scale, bias, bias_stride, out);
  }
  if (has_avx512()) return scores_avx512<T, false>(q, k, k_stride, S, D, scale, bias, bias_stride, out);
#endif
  for (int64_t s = 0; s < S; ++s)
    out[s] = scale * dot_scalar<T>(q, k + s * k_stride, D) + static_cast<float>(bias[s * bias_stride]);
}

void softmax_row(float* p, int64_t S) {
#ifdef DSCHAT_DECODE_AVX512
  if (has_avx512()) return softmax_avx512(p, S);
#endif
  const float max = *std::max_element(p, p + S);
  float sum = 0.0f;
  for (int64_t s = 0; s < S; ++s) sum += (p[s] = std::exp(p[s] - max));
  for (int64_t s = 0; s < S; ++s) p[s] /= sum;
}

// Heads [h0, h1) of one value head: up to 4 per pass.
template <typename T>
void weighted_values(const float* probs, int64_t S, int64_t h0, int64_t h1, const T* v, int64_t v_stride,
                     int64_t D, float* acc) {
  for (int64_t base = h0; base < h1; base += 4) {
    const int heads = static_cast<int>(std::min<int64_t>(4, h1 - base));
    const float* p[4];
    float* out[4];
    for (int h = 0; h < heads; ++h) {
      p[h] = probs + (base + h - h0) * S;
      out[h] = acc + (base + h - h0) * D;
    }
#ifdef DSCHAT_DECODE_AVX512
    if (has_avx512()) {
      weighted_values_avx512<T>(p, heads, v, v_stride, S, D, out);
      continue;
    }
#endif
    for (int h = 0; h < heads; ++h) {
      std::fill(out[h], out[h] + D, 0.0f);
      for (int64_t s = 0; s < S; ++s) axpy_scalar<T>(p[h][s], v + s * v_stride, out[h], D);
    }
  }
}

template <typename T, typename Bias>
at::Tensor run(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& bias,
               double scale) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = keys.size(1), S = keys.size(2);
  const int64_t G = H / Hkv;
  auto out = at::empty({B, H, 1, D}, q.options());
  const T* qp = q.data_ptr<T>();
  const T* kp = keys.data_ptr<T>();
  const T* vp = values.data_ptr<T>();
  const Bias* bp = bias.data_ptr<Bias>();
  T* op = out.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  const int64_t ks0 = keys.stride(0), ks1 = keys.stride(1), ks2 = keys.stride(2);
  const int64_t vs0 = values.stride(0), vs1 = values.stride(1), vs2 = values.stride(2);
  // A bias shared by the heads (size 1 along dim 1) has stride 0 there.
  const int64_t bs0 = bias.stride(0), bs1 = bias.size(1) == 1 ? 0 : bias.stride(1), bs3 = bias.stride(3);
  const auto fscale = static_cast<float>(scale);
  // A task is (batch row, kv head, heads of its group): the whole group where there are enough (b, kv head)
  // pairs to keep every thread busy, else one query head each (at batch 1, SmolLM2's 3 kv heads on 2 threads
  // would leave one idle half the time).
  const int64_t split = B * Hkv >= 2 * at::get_num_threads() ? 1 : G;
  const int64_t per_task = G / split;
  at::parallel_for(0, B * Hkv * split, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> probs(static_cast<size_t>(per_task * S)), acc(static_cast<size_t>(per_task * D));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (Hkv * split), kvh = task / split % Hkv, h0 = kvh * G + task % split * per_task;
      const T* k = kp + b * ks0 + kvh * ks1;
      for (int64_t i = 0; i < per_task; ++i) {
        const int64_t h = h0 + i;
        float* p = probs.data() + i * S;
        scores_row<T, Bias>(qp + b * qs0 + h * qs1, k, ks2, S, D, fscale, bp + b * bs0 + h * bs1, bs3, p);
        softmax_row(p, S);
      }
      weighted_values<T>(probs.data(), S, h0, h0 + per_task, vp + b * vs0 + kvh * vs1, vs2, D, acc.data());
      T* o = op + (b * H + h0) * D;
      for (int64_t i = 0; i < per_task * D; ++i) o[i] = static_cast<T>(acc[static_cast<size_t>(i)]);
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
  // The bias is read as it comes (the model's dtype or fp32); another dtype is converted once.
  const auto bias_dtype = bias.scalar_type() == dtype ? dtype : at::kFloat;
  const auto bias_c = bias.to(bias_dtype);
  if (dtype == at::kFloat) return run<float, float>(qc, keys, values, bias_c, scale);
  if (bias_dtype == at::kFloat) return run<BF16, float>(qc, keys, values, bias_c, scale);
  return run<BF16, BF16>(qc, keys, values, bias_c, scale);
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
