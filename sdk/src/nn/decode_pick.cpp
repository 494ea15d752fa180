// The greedy pick of a decode step (dschat/sdk/nn/decode_ops.h): argmax and log-probability per row of logits,
// one row per task. Compiled -fopenmp (sdk/CMakeLists.txt) so that at::parallel_for runs in parallel.
#include "dschat/sdk/nn/decode_ops.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include "dschat/sdk/nn/skinny_linear.h"
#include "avx512_exp.h"

#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>

namespace dschat {

namespace {

using BF16 = c10::BFloat16;

#if defined(__x86_64__) && defined(__GNUC__)
#define DSCHAT_PICK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

DSCHAT_PICK_AVX512 inline __m512 load16(const float* p, __mmask16 m, __m512 fill) {
  return _mm512_mask_loadu_ps(fill, m, p);
}
DSCHAT_PICK_AVX512 inline __m512 load16(const BF16* p, __mmask16 m, __m512 fill) {
  const __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
  return _mm512_mask_blend_ps(m, fill, v);
}
inline __mmask16 mask16(int64_t left) {
  return static_cast<__mmask16>(left >= 16 ? 0xFFFF : left <= 0 ? 0 : (1u << left) - 1);
}

// Pass 1: per lane the largest value and the first position holding it; then the lanes' first maximum. Pass 2:
// the sum of exp(x - max). Returns false for a row with a NaN (ATen's argmax picks the NaN: the caller falls back).
template <typename T>
DSCHAT_PICK_AVX512 bool pick_row(const T* x, int64_t V, int64_t& token, float& logprob) {
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 best = lowest;
  __m512i best_at = _mm512_set1_epi32(0), at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __mmask16 nan = 0;
  for (int64_t v = 0; v < V; v += 16) {
    const __mmask16 m = mask16(V - v);
    const __m512 x16 = load16(x + v, m, lowest);
    nan |= _mm512_cmp_ps_mask(x16, x16, _CMP_UNORD_Q);
    const __mmask16 greater = _mm512_cmp_ps_mask(x16, best, _CMP_GT_OQ);  // strictly: the first position stays
    best = _mm512_mask_blend_ps(greater, best, x16);
    best_at = _mm512_mask_blend_epi32(greater, best_at, at);
    at = _mm512_add_epi32(at, _mm512_set1_epi32(16));
  }
  if (nan) return false;
  const float max = _mm512_reduce_max_ps(best);
  const __mmask16 holders = _mm512_cmp_ps_mask(best, _mm512_set1_ps(max), _CMP_EQ_OQ);
  token = _mm512_mask_reduce_min_epi32(holders, best_at);
  const __m512 max_v = _mm512_set1_ps(max);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t v = 0; v < V; v += 16)  // lanes past V hold -inf: exp16 gives them 0
    sum = _mm512_add_ps(sum, detail::exp16(_mm512_sub_ps(load16(x + v, mask16(V - v), lowest), max_v)));
  logprob = -std::log(_mm512_reduce_add_ps(sum));  // x[token] = max
  return true;
}

template <typename T>
std::pair<at::Tensor, at::Tensor> pick_as(const at::Tensor& logits) {
  const int64_t N = logits.size(0), V = logits.size(1), stride = logits.stride(0);
  auto tokens = at::empty({N}, logits.options().dtype(at::kLong));
  auto logprobs = at::empty({N}, logits.options().dtype(at::kFloat));
  const T* x = logits.data_ptr<T>();
  int64_t* tp = tokens.data_ptr<int64_t>();
  float* lp = logprobs.data_ptr<float>();
  std::atomic<bool> ok{true};
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      if (!pick_row<T>(x + r * stride, V, tp[r], lp[r])) ok = false;
  });
  if (!ok) return {};
  return {tokens, logprobs};
}
#endif

}  // namespace

std::pair<at::Tensor, at::Tensor> greedy_pick_decode(const at::Tensor& logits) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (!skinny_isa_supported(SkinnyIsa::kAvx512) || !logits.defined() || !logits.device().is_cpu()) return {};
  if (logits.dim() != 2 || logits.size(1) == 0 || logits.stride(1) != 1) return {};
  if (logits.size(1) > std::numeric_limits<int32_t>::max()) return {};  // positions are 32-bit lanes
  if (at::GradMode::is_enabled() && logits.requires_grad()) return {};
  if (logits.scalar_type() == at::kFloat) return pick_as<float>(logits);
  if (logits.scalar_type() == at::kBFloat16) return pick_as<BF16>(logits);
#endif
  return {};
}

}  // namespace dschat
