// Skinny linear (dschat/sdk/nn/skinny_linear.h): y[M, N] = x[M, K] W[N, K]^T (+ b) for small M on the CPU.
// At decode M is the batch (one token per row) and the step is bound by reading W, so each row of W is loaded
// once and multiplied into all M rows of x (held in L1/L2; converted to fp32 once), accumulating in fp32.
// at::parallel_for only runs in parallel where _OPENMP is defined: this file is compiled -fopenmp
// (sdk/CMakeLists.txt), like cpu_adam.cpp.
//
// The SDK targets baseline x86-64, so the inner loops are AVX2+FMA intrinsics in functions compiled with
// __attribute__((target)), chosen at run time; other CPUs get a portable scalar loop (and fast_linear then keeps
// at::linear, which is faster than that loop).
#include "dschat/sdk/nn/skinny_linear.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>

#include <algorithm>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DSCHAT_SKINNY_AVX2 1
#endif

namespace dschat {

namespace {

// x rows per kernel pass: M accumulators per row of W must stay in the 16 ymm registers.
constexpr int kMaxPass = 8;

bool has_avx2() {
#ifdef DSCHAT_SKINNY_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
}

// Rows of W handled together: with few x rows, sharing each x load between R rows of W keeps the loop bound by
// W's stream rather than by loads (M * R accumulators + R W registers fit in 16 ymm).
// At least ~8 independent accumulators hide the FMA latency.
template <int M>
constexpr int rows_per_step() {
  return M == 1 ? 8 : M == 2 ? 4 : M == 3 ? 3 : M <= 6 ? 2 : 1;
}

template <typename T, int M, int R>
inline void store(const float (&s)[M][R], const T* bias, T* y, int64_t N, int64_t n) {
  for (int r = 0; r < R; ++r) {
    const float b = bias ? static_cast<float>(bias[n + r]) : 0.0f;
    for (int m = 0; m < M; ++m) y[m * N + n + r] = static_cast<T>(s[m][r] + b);
  }
}

// Portable: one row of W at a time, all M dot products.
template <typename T, int M>
void rows_scalar(const float* x, const T* w, const T* bias, T* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = w + n * K;
    float s[M][1] = {};
    for (int64_t k = 0; k < K; ++k) {
      const float wk = static_cast<float>(wr[k]);
      for (int m = 0; m < M; ++m) s[m][0] += wk * x[m * K + k];
    }
    store<T, M, 1>(s, bias, y, N, n);
  }
}

#ifdef DSCHAT_SKINNY_AVX2
__attribute__((target("avx2"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
// bf16 is the top half of an fp32: widen to 32 bits and shift into place (exact).
__attribute__((target("avx2"))) inline __m256 load8(const c10::BFloat16* p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

__attribute__((target("avx2"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// s[m][r] = x[m, :] . w[r, :] for R consecutive rows of W starting at w.
template <typename T, int M, int R>
__attribute__((target("avx2,fma"))) void dot_avx2(const float* x, const T* w, int64_t K, float (&s)[M][R]) {
  __m256 acc[M][R];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    __m256 wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      // The next R rows, one block ahead: with M > 1 the loop does too much work per byte for the out-of-order
      // window alone to keep enough of W's cache misses in flight (measured: M = 8 read W at half the M = 1 rate).
      _mm_prefetch(reinterpret_cast<const char*>(w + (R + r) * K + k), _MM_HINT_T0);
      wv[r] = load8(w + r * K + k);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m256 xv = _mm256_loadu_ps(x + m * K + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r], xv, acc[m][r]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) s[m][r] = hsum(acc[m][r]);
  for (; k < K; ++k)  // K % 8 tail
    for (int r = 0; r < R; ++r) {
      const float wk = static_cast<float>(w[r * K + k]);
      for (int m = 0; m < M; ++m) s[m][r] += wk * x[m * K + k];
    }
}

template <typename T, int M>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* x, const T* w, const T* bias, T* y, int64_t K,
                                                   int64_t N, int64_t n0, int64_t n1) {
  constexpr int R = rows_per_step<M>();
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    float s[M][R];
    dot_avx2<T, M, R>(x, w + n * K, K, s);
    store<T, M, R>(s, bias, y, N, n);
  }
  for (; n < n1; ++n) {
    float s[M][1];
    dot_avx2<T, M, 1>(x, w + n * K, K, s);
    store<T, M, 1>(s, bias, y, N, n);
  }
}
#endif

// Rows [n0, n1) of W against m (<= kMaxPass) rows of x; x and y point at the pass's first row.
template <typename T>
void pass(int m, bool avx2, const float* x, const T* w, const T* bias, T* y, int64_t K, int64_t N, int64_t n0,
          int64_t n1) {
  using Fn = void (*)(const float*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);
  static constexpr Fn scalar[kMaxPass] = {rows_scalar<T, 1>, rows_scalar<T, 2>, rows_scalar<T, 3>,
                                          rows_scalar<T, 4>, rows_scalar<T, 5>, rows_scalar<T, 6>,
                                          rows_scalar<T, 7>, rows_scalar<T, 8>};
#ifdef DSCHAT_SKINNY_AVX2
  static constexpr Fn vector[kMaxPass] = {rows_avx2<T, 1>, rows_avx2<T, 2>, rows_avx2<T, 3>, rows_avx2<T, 4>,
                                          rows_avx2<T, 5>, rows_avx2<T, 6>, rows_avx2<T, 7>, rows_avx2<T, 8>};
  if (avx2) return vector[m - 1](x, w, bias, y, K, N, n0, n1);
#endif
  (void)avx2;
  scalar[m - 1](x, w, bias, y, K, N, n0, n1);
}

template <typename T>
void run(const float* x, const T* w, const T* bias, T* y, int64_t M, int64_t K, int64_t N) {
  const bool avx2 = has_avx2();
  const int64_t row_bytes = K * static_cast<int64_t>(sizeof(T));
  // A task reads at least ~256 KB of W, so small layers are not split into tasks that cost more than they do.
  const int64_t grain = std::max<int64_t>(1, (int64_t{256} << 10) / row_bytes);
  // Past kMaxPass rows, W is walked in tiles that stay in L2 (~128 KB) while each pass of 8 x rows reads them.
  const int64_t tile = M <= kMaxPass ? N : std::max<int64_t>(1, (int64_t{128} << 10) / row_bytes);
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t0 = begin; t0 < end; t0 += tile) {
      const int64_t t1 = std::min(end, t0 + tile);
      for (int64_t m0 = 0; m0 < M; m0 += kMaxPass) {
        const int m = static_cast<int>(std::min<int64_t>(kMaxPass, M - m0));
        pass<T>(m, avx2, x + m0 * K, w, bias, y + m0 * N, K, N, t0, t1);
      }
    }
  });
}

// Measured on a 2-thread AMD EPYC (tools/bench/bench_skinny_linear.cpp): the kernel beats at::linear up to these
// many rows; smaller weights than kMinWeightBytes gain too little to be worth the dispatch.
constexpr int64_t kMaxRowsFloat = 8;
constexpr int64_t kMaxRowsBFloat16 = 8;
constexpr int64_t kMinWeightBytes = 0;

}  // namespace

at::Tensor skinny_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "skinny_linear: CPU tensors only");
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "skinny_linear: weight must be fp32 or bf16, got ",
              dtype);
  TORCH_CHECK(x.scalar_type() == dtype, "skinny_linear: input dtype ", x.scalar_type(), " != weight dtype ", dtype);
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "skinny_linear: weight must be a contiguous matrix");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == weight.size(1), "skinny_linear: input features ",
              x.dim() >= 1 ? x.size(-1) : 0, " != weight's ", weight.size(1));
  const int64_t N = weight.size(0), K = weight.size(1);
  if (bias.defined()) {
    TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == dtype && bias.dim() == 1 && bias.size(0) == N,
                "skinny_linear: bias must be a CPU [", N, "] tensor of the weight's dtype");
  }
  auto out_sizes = x.sizes().vec();
  out_sizes.back() = N;
  auto y = at::empty(out_sizes, weight.options().requires_grad(false));
  const int64_t M = K == 0 ? 0 : x.numel() / K;
  if (M == 0 || N == 0) return y;
  if (K == 0) return bias.defined() ? y.copy_(bias.expand_as(y)) : y.zero_();
  const auto xf = x.reshape({M, K}).to(at::kFloat).contiguous();  // fp32 copy only for bf16 or strided input
  const auto b = bias.defined() ? bias.contiguous() : bias;
  if (dtype == at::kFloat) {
    run<float>(xf.data_ptr<float>(), weight.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr,
               y.data_ptr<float>(), M, K, N);
  } else {
    using BF = c10::BFloat16;
    run<BF>(xf.data_ptr<float>(), weight.data_ptr<BF>(), b.defined() ? b.data_ptr<BF>() : nullptr,
            y.data_ptr<BF>(), M, K, N);
  }
  return y;
}

int64_t skinny_linear_max_rows(at::ScalarType dtype) {
  return dtype == at::kFloat ? kMaxRowsFloat : dtype == at::kBFloat16 ? kMaxRowsBFloat16 : 0;
}

bool use_skinny_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!has_avx2() || !x.defined() || !weight.defined()) return false;
  if (!x.device().is_cpu() || !weight.device().is_cpu()) return false;
  const auto dtype = weight.scalar_type();
  if (x.scalar_type() != dtype || weight.dim() != 2 || !weight.is_contiguous() || x.dim() < 1) return false;
  const int64_t K = weight.size(1);
  if (K == 0 || x.size(-1) != K || weight.nbytes() < static_cast<size_t>(kMinWeightBytes)) return false;
  const int64_t M = x.numel() / K;
  if (M < 1 || M > skinny_linear_max_rows(dtype)) return false;
  if (bias.defined() && (!bias.device().is_cpu() || bias.scalar_type() != dtype || bias.dim() != 1 ||
                         bias.size(0) != weight.size(0)))
    return false;
  // The kernel has no backward: only where autograd would not record the op.
  if (at::GradMode::is_enabled() &&
      (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad())))
    return false;
  return true;
}

at::Tensor fast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return use_skinny_linear(x, weight, bias) ? skinny_linear(x, weight, bias) : at::linear(x, weight, bias);
}

}  // namespace dschat
