// Host AdamW (dschat/sdk/cpu_adam.h). The step is memory-bound: it reads p, g, m, v and writes p, m, v (and the
// model copy), so the whole update is done in one pass per element, split over LibTorch's OpenMP threads in large
// chunks, instead of LibTorch's torch::optim::AdamW, which makes ~8 elementwise passes and allocates temporaries.
// at::parallel_for only runs in parallel where _OPENMP is defined: this file is compiled -fopenmp (sdk/CMakeLists.txt).
//
// The SDK is built for the baseline x86-64 ISA, where at::vec::Vectorized<float> is an 8-float array the compiler
// barely vectorises (measured: no faster than a scalar loop, and the sqrt/div per element then bound the step).
// So on x86-64 CPUs with AVX2+FMA+F16C (checked at run time) the block kernels are AVX2 intrinsics in functions
// compiled with __attribute__((target)): only those functions use AVX2, nothing inline and shared with other
// translation units is compiled for it, and the same binary stays safe on older CPUs (Vectorized fallback).
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DSCHAT_CPU_ADAM_AVX2 1
#endif

#include "dschat/sdk/cpu_adam.h"

namespace dschat {

namespace {

using Vec = at::vec::Vectorized<float>;

// Elements per thread task: large enough to amortise the scheduling, small enough to balance 100M-element
// tensors over many threads.
constexpr int64_t kGrain = 32 * 1024;
// The model copy is written per block of this many elements, while the block's updated params are still in L1.
constexpr int64_t kBlock = 1024;

struct Coeffs {
  float decay;         // 1 - lr*wd
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float inv_bc2_sqrt;  // 1 / sqrt(1 - beta2^t)
  float eps;
  float neg_step;      // -lr / (1 - beta1^t)
};

inline void adamw_one(float& p, float g, float& m, float& v, const Coeffs& c) {
  p *= c.decay;
  m = m * c.beta1 + g * c.one_minus_beta1;
  v = v * c.beta2 + (g * g) * c.one_minus_beta2;
  p += c.neg_step * (m / (std::sqrt(v) * c.inv_bc2_sqrt + c.eps));
}

void adamw_block(float* p, const float* g, float* m, float* v, int64_t n, const Coeffs& c) {
  const Vec decay(c.decay), beta1(c.beta1), one_minus_beta1(c.one_minus_beta1), beta2(c.beta2),
      one_minus_beta2(c.one_minus_beta2), inv_bc2_sqrt(c.inv_bc2_sqrt), eps(c.eps), neg_step(c.neg_step);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec gv = Vec::loadu(g + i);
    Vec mv = at::vec::fmadd(Vec::loadu(m + i), beta1, gv * one_minus_beta1);
    Vec vv = at::vec::fmadd(Vec::loadu(v + i), beta2, gv * gv * one_minus_beta2);
    Vec denom = at::vec::fmadd(vv.sqrt(), inv_bc2_sqrt, eps);
    Vec pv = at::vec::fmadd(neg_step, mv / denom, Vec::loadu(p + i) * decay);
    pv.store(p + i);
    mv.store(m + i);
    vv.store(v + i);
  }
  for (; i < n; ++i) adamw_one(p[i], g[i], m[i], v[i], c);
}

#ifdef DSCHAT_CPU_ADAM_AVX2
bool has_avx2() {
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return yes;
}

__attribute__((target("avx2,fma"))) void adamw_block_avx2(float* p, const float* g, float* m, float* v, int64_t n,
                                                          const Coeffs& c) {
  const __m256 decay = _mm256_set1_ps(c.decay), beta1 = _mm256_set1_ps(c.beta1),
               one_minus_beta1 = _mm256_set1_ps(c.one_minus_beta1), beta2 = _mm256_set1_ps(c.beta2),
               one_minus_beta2 = _mm256_set1_ps(c.one_minus_beta2), inv_bc2_sqrt = _mm256_set1_ps(c.inv_bc2_sqrt),
               eps = _mm256_set1_ps(c.eps), neg_step = _mm256_set1_ps(c.neg_step);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 mv = _mm256_fmadd_ps(_mm256_loadu_ps(m + i), beta1, _mm256_mul_ps(gv, one_minus_beta1));
    const __m256 vv =
        _mm256_fmadd_ps(_mm256_loadu_ps(v + i), beta2, _mm256_mul_ps(_mm256_mul_ps(gv, gv), one_minus_beta2));
    const __m256 denom = _mm256_fmadd_ps(_mm256_sqrt_ps(vv), inv_bc2_sqrt, eps);
    const __m256 pv =
        _mm256_fmadd_ps(neg_step, _mm256_div_ps(mv, denom), _mm256_mul_ps(_mm256_loadu_ps(p + i), decay));
    _mm256_storeu_ps(p + i, pv);
    _mm256_storeu_ps(m + i, mv);
    _mm256_storeu_ps(v + i, vv);
  }
  for (; i < n; ++i) adamw_one(p[i], g[i], m[i], v[i], c);
}

// float -> bfloat16 bits exactly as c10::BFloat16(float): round to nearest even, any NaN -> 0x7FC0.
__attribute__((target("avx2"))) void to_bf16_avx2(const float* src, c10::BFloat16* dst, int64_t n) {
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1), nan = _mm256_set1_epi32(0x7FC0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    const __m256i bits = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(bias, lsb)), 16);
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q)));
    // 8 x u32 (< 2^16) -> 8 x u16: pack within each 128-bit lane, then gather the two lanes' low halves.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0b1000);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_castsi256_si128(packed));
  }
  for (; i < n; ++i) dst[i] = c10::BFloat16(src[i]);
}

// float -> IEEE half, round to nearest even (as c10::Half(float)).
__attribute__((target("avx2,f16c"))) void to_half_avx2(const float* src, c10::Half* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = c10::Half(src[i]);
}
#endif

template <bool kAvx2, typename Copy>
void adamw_range(float* p, const float* g, float* m, float* v, Copy* copy, int64_t n, const Coeffs& c) {
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t len = std::min(kBlock, n - b);
#ifdef DSCHAT_CPU_ADAM_AVX2
    if constexpr (kAvx2) {
      adamw_block_avx2(p + b, g + b, m + b, v + b, len, c);
      if constexpr (std::is_same_v<Copy, c10::BFloat16>) {
        to_bf16_avx2(p + b, copy + b, len);
        continue;
      } else if constexpr (std::is_same_v<Copy, c10::Half>) {
        to_half_avx2(p + b, copy + b, len);
        continue;
      }
    } else
#endif
    {
      adamw_block(p + b, g + b, m + b, v + b, len, c);
    }
    if constexpr (std::is_same_v<Copy, float>) {
      std::memcpy(copy + b, p + b, len * sizeof(float));
    } else if constexpr (!std::is_void_v<Copy>) {
      at::vec::convert(p + b, copy + b, len);  // round to nearest even, as Tensor::to
    }
  }
}

// DSCHAT_CPU_ADAM_PORTABLE=1 selects the portable kernel on an AVX2 machine, so tests can cover it too.
bool force_portable_kernel() {
  const char* value = std::getenv("DSCHAT_CPU_ADAM_PORTABLE");
  return value && *value && std::strcmp(value, "0") != 0;
}

bool use_avx2() {
#ifdef DSCHAT_CPU_ADAM_AVX2
  return has_avx2() && !force_portable_kernel();
#else
  return false;
#endif
}

void check_state(const at::Tensor& t, const char* name, int64_t numel) {
  TORCH_CHECK(t.defined(), "cpu_adamw_step: ", name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), "cpu_adamw_step: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, "cpu_adamw_step: ", name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), "cpu_adamw_step: ", name, " must be contiguous");
  TORCH_CHECK(t.numel() == numel, "cpu_adamw_step: ", name, " has ", t.numel(), " elements, param has ", numel);
}

}  // namespace

void cpu_adamw_step(at::Tensor& param, const at::Tensor& grad, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                    const AdamWHyper& hyper, at::Tensor* model_copy) {
  TORCH_CHECK(param.defined(), "cpu_adamw_step: param is undefined");
  const int64_t n = param.numel();
  check_state(param, "param", n);
  check_state(grad, "grad", n);
  check_state(exp_avg, "exp_avg", n);
  check_state(exp_avg_sq, "exp_avg_sq", n);
  TORCH_CHECK(hyper.step >= 1, "cpu_adamw_step: step is 1-based, got ", hyper.step);
  TORCH_CHECK(hyper.beta1 >= 0 && hyper.beta1 < 1 && hyper.beta2 >= 0 && hyper.beta2 < 1,
              "cpu_adamw_step: betas must be in [0, 1), got (", hyper.beta1, ", ", hyper.beta2, ")");
  if (model_copy) {
    const at::Tensor& c = *model_copy;
    TORCH_CHECK(c.defined(), "cpu_adamw_step: model_copy is undefined");
    TORCH_CHECK(c.device().is_cpu(), "cpu_adamw_step: model_copy must be a CPU tensor, got ", c.device());
    TORCH_CHECK(c.scalar_type() == at::kBFloat16 || c.scalar_type() == at::kHalf || c.scalar_type() == at::kFloat,
                "cpu_adamw_step: model_copy must be bfloat16, float16 or float32, got ", c.scalar_type());
    TORCH_CHECK(c.is_contiguous(), "cpu_adamw_step: model_copy must be contiguous");
    TORCH_CHECK(c.numel() == n, "cpu_adamw_step: model_copy has ", c.numel(), " elements, param has ", n);
    TORCH_CHECK(!c.is_same(param), "cpu_adamw_step: model_copy must not be param itself");
  }
  // Scalars in double, as torch.optim computes them, then rounded once to the kernel's float.
  const double bc1 = 1.0 - std::pow(hyper.beta1, static_cast<double>(hyper.step));
  const double bc2 = 1.0 - std::pow(hyper.beta2, static_cast<double>(hyper.step));
  const Coeffs coeffs{static_cast<float>(1.0 - hyper.lr * hyper.weight_decay),
                      static_cast<float>(hyper.beta1),
                      static_cast<float>(1.0 - hyper.beta1),
                      static_cast<float>(hyper.beta2),
                      static_cast<float>(1.0 - hyper.beta2),
                      static_cast<float>(1.0 / std::sqrt(bc2)),
                      static_cast<float>(hyper.eps),
                      static_cast<float>(-hyper.lr / bc1)};
  float* p = param.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const bool avx2 = use_avx2();
  // Threads split the range at cache-line multiples (as PyTorch's fused kernel does): no line is shared between
  // two writers, and every element but the tensor's last few takes the vector path whatever the thread count, so
  // the result does not depend on it.
  constexpr int64_t kLine = 64 / sizeof(float);
  auto run = [&](auto* copy) {
    at::parallel_for(0, (n + kLine - 1) / kLine, kGrain / kLine, [&](int64_t first_line, int64_t end_line) {
      const int64_t begin = first_line * kLine, end = std::min(n, end_line * kLine);
      auto* chunk_copy = copy;
      if constexpr (!std::is_void_v<std::remove_pointer_t<decltype(copy)>>) chunk_copy += begin;
      if (avx2)
        adamw_range<true>(p + begin, g + begin, m + begin, v + begin, chunk_copy, end - begin, coeffs);
      else
        adamw_range<false>(p + begin, g + begin, m + begin, v + begin, chunk_copy, end - begin, coeffs);
    });
  };
  if (!model_copy) {
    run(static_cast<void*>(nullptr));
  } else if (model_copy->scalar_type() == at::kBFloat16) {
    run(model_copy->data_ptr<c10::BFloat16>());
  } else if (model_copy->scalar_type() == at::kHalf) {
    run(model_copy->data_ptr<c10::Half>());
  } else {
    run(model_copy->data_ptr<float>());
  }
}

const char* cpu_adam_kernel() { return use_avx2() ? "avx2" : "portable"; }

}  // namespace dschat
