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
#include "dschat/sdk/nn/onednn_linear.h"
#include "avx512_sum16.h"

#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DSCHAT_SKINNY_AVX2 1
#endif

namespace dschat {

namespace {

// x rows per kernel pass: M accumulators per row of W must stay in the vector registers (16 ymm, 32 zmm).
constexpr int kMaxPass = 8;
constexpr int64_t kPrefetchBytes = 16 << 10;

bool cpu_has(SkinnyIsa isa) {
#ifdef DSCHAT_SKINNY_AVX2
  switch (isa) {
    case SkinnyIsa::kScalar: return true;
    case SkinnyIsa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SkinnyIsa::kAvx512:  // VL too: decode_attention and decode_ops use 256-bit AVX-512 forms
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
    case SkinnyIsa::kAvx512Bf16:
      return cpu_has(SkinnyIsa::kAvx512) && __builtin_cpu_supports("avx512bf16");
  }
  return false;
#else
  return isa == SkinnyIsa::kScalar;
#endif
}

bool has_avx2() {
  static const bool yes = cpu_has(SkinnyIsa::kAvx2);
  return yes;
}

// Rows of W handled together: with few x rows, sharing each x load between R rows of W keeps the loop bound by
// W's stream rather than by loads; M * R accumulators (at least ~8 to hide the FMA latency) plus the W registers
// must fit in the register file: 16 ymm for AVX2 (two W registers per row for bf16), 32 zmm for AVX-512.
template <typename T, int M>
constexpr int avx2_rows_per_step() {
  if constexpr (std::is_same_v<T, float>) return M == 1 ? 8 : M == 2 ? 4 : M == 3 ? 3 : M <= 6 ? 2 : 1;
  return M == 1 ? 4 : M == 2 ? 3 : M <= 4 ? 2 : 1;
}
// AVX-512 with one W register per row (fp32, or bf16 pairs for vdpbf16ps): M * R + R + 1 <= 32.
template <int M>
constexpr int avx512_rows_per_step() {
  return M == 1 ? 8 : M == 2 ? 6 : M <= 4 ? 4 : 3;
}
// AVX-512F widening bf16 (two W registers per row): M * R + 2 R + 2 <= 32.
template <int M>
constexpr int avx512_widen_rows_per_step() {
  return M == 1 ? 8 : M == 2 ? 6 : M <= 4 ? 4 : M <= 6 ? 3 : 2;
}

template <typename T, int M, int R>
inline void store(const float (&s)[M][R], const T* bias, T* y, int64_t N, int64_t n) {
  for (int r = 0; r < R; ++r) {
    const float b = bias ? static_cast<float>(bias[n + r]) : 0.0f;
    for (int m = 0; m < M; ++m) y[m * N + n + r] = static_cast<T>(s[m][r] + b);
  }
}

// The K % step tail of the vector loops, in x's original order (the permuted layouts keep the tail as is).
template <typename T, typename X, int M, int R>
inline void dot_tail(const X* x, const T* w, int64_t K, int64_t k, float (&s)[M][R]) {
  for (; k < K; ++k)
    for (int r = 0; r < R; ++r) {
      const float wk = static_cast<float>(w[r * K + k]);
      for (int m = 0; m < M; ++m) s[m][r] += wk * static_cast<float>(x[m * K + k]);
    }
}

// Each kernel: s[m][r] = x[m, :] . w[r, :] for R consecutive rows of W starting at w; `ahead` is how far ahead
// (in elements) W is prefetched. X is the type x is handed over in (fp32, or bf16 for vdpbf16ps).
struct ScalarKernel {
  using X = float;
  template <typename T, int M>
  static constexpr int rows_per_step() { return 1; }
  template <typename T, int M, int R>
  static void dot(const float* x, const T* w, int64_t K, int64_t, float (&s)[M][R]) {
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < R; ++r) s[m][r] = 0.0f;
    dot_tail<T, float, M, R>(x, w, K, 0, s);
  }
};

#ifdef DSCHAT_SKINNY_AVX2
__attribute__((target("avx2"))) inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// bf16: a 32-bit lane of 16 loaded bf16 holds elements 2i (low half) and 2i+1 (high half); a shift and a mask
// make both exact fp32 vectors (2 ALU ops per 16 weights, half of widening 8 at a time, which bound the loop).
// x is pre-permuted to match: each full block of 16 stores its even elements, then its odd ones (x_layout).
struct Avx2Kernel {
  using X = float;
  template <typename T, int M>
  static constexpr int rows_per_step() { return avx2_rows_per_step<T, M>(); }

  template <typename T, int M, int R>
  __attribute__((target("avx2,fma"))) static void dot(const float* x, const T* w, int64_t K, int64_t ahead,
                                                      float (&s)[M][R]) {
    constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
    constexpr int kStep = kBf16 ? 16 : 8;
    __m256 acc[M][R];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[m][r] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + kStep <= K; k += kStep) {
      __m256 wv[R][kStep / 8];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        // W `ahead` elements on: with M > 1 the loop does too much work per byte for the out-of-order window
        // alone to keep enough of W's cache misses in flight. Into L2, not L1, where it would evict x (measured
        // at M = 8 on the LM head: 10.5 ms with T0, 6.4 ms with T1, 9-13 ms without prefetching).
        _mm_prefetch(reinterpret_cast<const char*>(w + ahead + r * K + k), _MM_HINT_T1);
        if constexpr (kBf16) {
          const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k));
          wv[r][0] = _mm256_castsi256_ps(_mm256_slli_epi32(raw, 16));
          wv[r][1] = _mm256_castsi256_ps(_mm256_and_si256(raw, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
        } else {
          wv[r][0] = _mm256_loadu_ps(w + r * K + k);
        }
      }
#pragma GCC unroll 2
      for (int h = 0; h < kStep / 8; ++h)
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m256 xv = _mm256_loadu_ps(x + m * K + k + 8 * h);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) acc[m][r] = _mm256_fmadd_ps(wv[r][h], xv, acc[m][r]);
        }
    }
    for (int m = 0; m < M; ++m)
      for (int r = 0; r < R; ++r) s[m][r] = hsum(acc[m][r]);
    dot_tail<T, float, M, R>(x, w, K, k, s);
  }
};

template <int M, int R>
__attribute__((target("avx512f"))) inline void reduce_all(const __m512 (&acc)[M][R], float (&s)[M][R]) {
  constexpr int kCount = M * R;
  const __m512* flat = &acc[0][0];
  float* out = &s[0][0];
  for (int base = 0; base < kCount; base += 16) {
    __m512 v[16];
    for (int i = 0; i < 16; ++i) v[i] = base + i < kCount ? flat[base + i] : _mm512_setzero_ps();
    alignas(64) float sums[16];
    _mm512_store_ps(sums, detail::sum16(v));
    for (int i = 0; i < 16 && base + i < kCount; ++i) out[base + i] = sums[i];
  }
}

// AVX-512F: fp32 16 at a time; bf16 widened as in Avx2Kernel, 32 at a time (x permuted per block of 32).
struct Avx512Kernel {
  using X = float;
  template <typename T, int M>
  static constexpr int rows_per_step() {
    return std::is_same_v<T, float> ? avx512_rows_per_step<M>() : avx512_widen_rows_per_step<M>();
  }

  template <typename T, int M, int R>
  __attribute__((target("avx512f,avx512bw"))) static void dot(const float* x, const T* w, int64_t K,
                                                              int64_t ahead, float (&s)[M][R]) {
    constexpr bool kBf16 = std::is_same_v<T, c10::BFloat16>;
    constexpr int kStep = kBf16 ? 32 : 16;
    __m512 acc[M][R];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + kStep <= K; k += kStep) {
      __m512 wv[R][kStep / 16];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        _mm_prefetch(reinterpret_cast<const char*>(w + ahead + r * K + k), _MM_HINT_T1);  // one line per load
        if constexpr (kBf16) {
          const __m512i raw = _mm512_loadu_si512(w + r * K + k);
          wv[r][0] = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
          wv[r][1] = _mm512_castsi512_ps(_mm512_and_si512(raw, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
        } else {
          wv[r][0] = _mm512_loadu_ps(w + r * K + k);
        }
      }
#pragma GCC unroll 2
      for (int h = 0; h < kStep / 16; ++h)
#pragma GCC unroll 8
        for (int m = 0; m < M; ++m) {
          const __m512 xv = _mm512_loadu_ps(x + m * K + k + 16 * h);
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) acc[m][r] = _mm512_fmadd_ps(wv[r][h], xv, acc[m][r]);
        }
    }
    reduce_all<M, R>(acc, s);
    dot_tail<T, float, M, R>(x, w, K, k, s);
  }
};

// AVX-512-BF16: vdpbf16ps multiplies 16 pairs of bf16 (exact products) and adds both into fp32 lanes, so x stays
// bf16 in its own order and W is used as loaded: one instruction per 32 weights and x row, twice the FMA's work
// (Zen 4: one a cycle either way). The K % 32 tail is a zero-filled masked load of both operands; the body uses
// plain loads, since masked ones in the loop held 8 rows to 40% of the read bandwidth (Zen 4, LM head).
struct Avx512Bf16Kernel {
  using X = c10::BFloat16;
  template <typename T, int M>
  static constexpr int rows_per_step() { return avx512_rows_per_step<M>(); }

  // 32 elements (those in `mask`) of every x row and R rows of W from column k on.
  template <int M, int R, bool kFull>
  __attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) static inline void step(
      const c10::BFloat16* x, const c10::BFloat16* w, int64_t K, int64_t k, int64_t ahead, __mmask32 mask,
      __m512 (&acc)[M][R]) {
    __m512bh wv[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + ahead + r * K + k), _MM_HINT_T1);
      wv[r] = (__m512bh)(kFull ? _mm512_loadu_si512(w + r * K + k) : _mm512_maskz_loadu_epi16(mask, w + r * K + k));
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m512bh xv =
          (__m512bh)(kFull ? _mm512_loadu_si512(x + m * K + k) : _mm512_maskz_loadu_epi16(mask, x + m * K + k));
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv[r], xv);
    }
  }

  template <typename T, int M, int R>
  __attribute__((target("avx512f,avx512bw,avx512bf16"))) static void dot(const c10::BFloat16* x, const T* w,
                                                                         int64_t K, int64_t ahead,
                                                                         float (&s)[M][R]) {
    static_assert(std::is_same_v<T, c10::BFloat16>, "vdpbf16ps takes bf16 weights");
    __m512 acc[M][R];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) step<M, R, true>(x, w, K, k, ahead, ~__mmask32{0}, acc);
    if (k < K) step<M, R, false>(x, w, K, k, ahead, static_cast<__mmask32>((uint64_t{1} << (K - k)) - 1), acc);
    reduce_all<M, R>(acc, s);
  }
};
#endif

// Rows [n0, n1) of W against M rows of x: R rows of W at a time, then the rest one by one.
template <class Kernel, typename T, int M>
void rows(const typename Kernel::X* x, const T* w, const T* bias, T* y, int64_t K, int64_t N, int64_t n0,
          int64_t n1) {
  constexpr int R = Kernel::template rows_per_step<T, M>();
  // Prefetch whole blocks of R rows, at least kPrefetchBytes ahead (4-64 KB measured alike).
  const int64_t block = R * K;
  const int64_t ahead = (kPrefetchBytes / static_cast<int64_t>(sizeof(T)) + block - 1) / block * block;
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    float s[M][R];
    Kernel::template dot<T, M, R>(x, w + n * K, K, ahead, s);
    store<T, M, R>(s, bias, y, N, n);
  }
  for (; n < n1; ++n) {
    float s[M][1];
    Kernel::template dot<T, M, 1>(x, w + n * K, K, ahead, s);
    store<T, M, 1>(s, bias, y, N, n);
  }
}

template <class Kernel, typename T>
using RowsFn = void (*)(const typename Kernel::X*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t);

template <class Kernel, typename T, int... Ms>
constexpr std::array<RowsFn<Kernel, T>, sizeof...(Ms)> rows_table(std::integer_sequence<int, Ms...>) {
  return {rows<Kernel, T, Ms + 1>...};
}

// One linear of a group that shares x: W [N, K], its bias (or null) and y [M, N].
template <typename T>
struct Segment {
  const T* w;
  const T* bias;
  T* y;
  int64_t N;
};

// Every segment's rows in one parallel loop, so a group (q, k and v) costs one fork-join and its threads split
// all of the group's rows evenly rather than each small matrix's.
template <class Kernel, typename T>
void run(const typename Kernel::X* x, const std::vector<Segment<T>>& segments, int64_t M, int64_t K) {
  static constexpr auto passes = rows_table<Kernel, T>(std::make_integer_sequence<int, kMaxPass>());
  int64_t total = 0;
  for (const auto& segment : segments) total += segment.N;
  const int64_t row_bytes = K * static_cast<int64_t>(sizeof(T));
  // A task reads at least ~64 KB of W, so tiny layers are not split into tasks that cost more than they do, while
  // SmolLM2's 221 KB k/v projections still use both threads (at 256 KB one thread read them, the other waited).
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / row_bytes);
  // Past kMaxPass rows, W is walked in tiles that stay in L2 (~128 KB) while each pass of 8 x rows reads them.
  const int64_t tile = M <= kMaxPass ? total : std::max<int64_t>(8, (int64_t{128} << 10) / row_bytes);
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    int64_t offset = 0;  // the first row of `segment` in the group's row numbering
    for (const auto& segment : segments) {
      const int64_t lo = std::max(begin, offset), hi = std::min(end, offset + segment.N);
      for (int64_t t0 = lo; t0 < hi; t0 += tile) {
        const int64_t t1 = std::min(hi, t0 + tile);
        for (int64_t m0 = 0; m0 < M; m0 += kMaxPass) {
          const int m = static_cast<int>(std::min<int64_t>(kMaxPass, M - m0));
          passes[m - 1](x + m0 * K, segment.w, segment.bias, segment.y + m0 * segment.N, K, segment.N,
                        t0 - offset, t1 - offset);
        }
      }
      offset += segment.N;
    }
  });
}

// Where the kernel beats at::linear, measured on a 2-thread AMD EPYC (Zen 4) with W streamed from DRAM
// (tools/bench/bench_skinny_linear.cpp, OPT-125m's LM head [50272, 768] and block [3072, 768], [768, 3072],
// [768, 768]). fp32: 1.9-4.8x up to 8 rows, 1.3-2.7x at 12, 0.98-2.4x at 16.
constexpr int64_t kMaxRowsFloat = 12;
// bf16 where LibTorch's bf16 GEMM is its generic fallback (torch_has_fast_bf16 false), measured on a 2-thread
// AMD EPYC (Zen 3, AVX2): the kernel is 2.4-6.7x at::linear at every row count up to 128, and faster than the
// upcast GEMM (fast_linear's other bf16 path) up to 32 rows for every shape ([768, 3072] at 32: 2.6 vs 2.4 ms);
// at 48 rows the upcast GEMM wins on the block matrices (2.7 vs 4.0 ms), not yet on the LM head.
constexpr int64_t kMaxRowsBf16 = 32;
// bf16 where LibTorch has oneDNN's bf16 GEMM (AVX-512), measured on a 2-thread AMD EPYC (Zen 4, AVX-512-BF16)
// over OPT-125m's and SmolLM2-135M's matrices: the vdpbf16ps loop is 1.5-3.0x at::linear up to 8 rows,
// 1.1-1.8x at 32, 0.96-1.6x at 48 (bench_skinny_linear --dtypes bf16 --rows 4,8,12,16,24,32,48).
constexpr int64_t kMaxRowsBf16OneDnn = 32;

// LibTorch's CPU bf16 GEMM is oneDNN's where oneDNN has bf16 kernels (AVX-512 BW/VL/DQ, AMX, AVX2-VNNI-2);
// elsewhere ATen runs a generic loop, ~7x slower than fp32 sgemm (Zen 3, 2 threads: 5 vs 40 GFLOP/s). Only
// AVX-512 is checked: an AVX2-VNNI-2 CPU takes dschat's bf16 paths (not measured there).
bool torch_has_fast_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool yes = (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                           __builtin_cpu_supports("avx512dq"));
  return yes;
#else
  return true;  // not x86: leave bf16 to LibTorch
#endif
}

int64_t max_rows(at::ScalarType dtype) {
  if (dtype == at::kFloat) return kMaxRowsFloat;
  if (dtype != at::kBFloat16) return 0;
  return torch_has_fast_bf16() ? kMaxRowsBf16OneDnn : kMaxRowsBf16;
}

// The order of x that a widening bf16 loop expects: per full block of `block` elements (16 for AVX2, 32 for
// AVX-512F), the even elements then the odd ones; the tail as is.
at::Tensor widened_bf16_x_layout(const at::Tensor& xf, int64_t block) {
  const int64_t M = xf.size(0), K = xf.size(1), body = K / block * block;
  if (body == 0) return xf;
  auto blocks = xf.narrow(1, 0, body).view({M, body / block, block / 2, 2}).transpose(2, 3).reshape({M, body});
  return body == K ? blocks : at::cat({blocks, xf.narrow(1, body, K - body)}, 1);
}

template <class Kernel, typename T>
void run_on(const at::Tensor& x, at::TensorList weights, at::TensorList biases, std::vector<at::Tensor>& ys) {
  const int64_t K = weights[0].size(1), M = x.numel() / K;
  at::Tensor xk;
  if constexpr (std::is_same_v<typename Kernel::X, float>) {
    xk = x.reshape({M, K}).to(at::kFloat).contiguous();  // a copy only for bf16 or strided input
    if (std::is_same_v<T, c10::BFloat16> && !std::is_same_v<Kernel, ScalarKernel>)
      xk = widened_bf16_x_layout(xk, std::is_same_v<Kernel, Avx2Kernel> ? 16 : 32);
  } else {
    xk = x.reshape({M, K}).contiguous();
  }
  std::vector<Segment<T>> segments;
  for (size_t i = 0; i < weights.size(); ++i) {
    const bool has_bias = i < biases.size() && biases[i].defined();
    segments.push_back({weights[i].data_ptr<T>(), has_bias ? biases[i].data_ptr<T>() : nullptr,
                        ys[i].data_ptr<T>(), weights[i].size(0)});
  }
  run<Kernel, T>(xk.data_ptr<typename Kernel::X>(), segments, M, K);
}

template <typename T>
void run_isa(SkinnyIsa isa, const at::Tensor& x, at::TensorList weights, at::TensorList biases,
             std::vector<at::Tensor>& ys) {
  switch (isa) {
#ifdef DSCHAT_SKINNY_AVX2
    case SkinnyIsa::kAvx512Bf16:
      if constexpr (std::is_same_v<T, c10::BFloat16>) return run_on<Avx512Bf16Kernel, T>(x, weights, biases, ys);
      [[fallthrough]];  // fp32 has nothing to pair: the AVX-512F loop
    case SkinnyIsa::kAvx512: return run_on<Avx512Kernel, T>(x, weights, biases, ys);
    case SkinnyIsa::kAvx2: return run_on<Avx2Kernel, T>(x, weights, biases, ys);
#endif
    default: return run_on<ScalarKernel, T>(x, weights, biases, ys);
  }
}

}  // namespace

const char* skinny_isa_name(SkinnyIsa isa) {
  switch (isa) {
    case SkinnyIsa::kScalar: return "scalar";
    case SkinnyIsa::kAvx2: return "avx2";
    case SkinnyIsa::kAvx512: return "avx512";
    case SkinnyIsa::kAvx512Bf16: return "avx512-bf16";
  }
  return "?";
}

bool skinny_isa_supported(SkinnyIsa isa) { return cpu_has(isa); }

SkinnyIsa skinny_best_isa() {
  static const SkinnyIsa best = [] {
    for (auto isa : {SkinnyIsa::kAvx512Bf16, SkinnyIsa::kAvx512, SkinnyIsa::kAvx2})
      if (cpu_has(isa)) return isa;
    return SkinnyIsa::kScalar;
  }();
  return best;
}

at::Tensor skinny_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return skinny_linear(skinny_best_isa(), x, weight, bias);
}

at::Tensor skinny_linear(SkinnyIsa isa, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return skinny_linear_group(isa, x, {weight}, {bias})[0];
}

std::vector<at::Tensor> skinny_linear_group(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  return skinny_linear_group(skinny_best_isa(), x, weights, biases);
}

std::vector<at::Tensor> skinny_linear_group(SkinnyIsa isa, const at::Tensor& x, at::TensorList weights,
                                            at::TensorList biases) {
  TORCH_CHECK(cpu_has(isa), "skinny_linear: this CPU cannot run the ", skinny_isa_name(isa), " kernel");
  TORCH_CHECK(!weights.empty(), "skinny_linear_group: no weights");
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "skinny_linear_group: ", biases.size(),
              " biases for ", weights.size(), " weights");
  const auto dtype = weights[0].scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "skinny_linear: weight must be fp32 or bf16, got ",
              dtype);
  TORCH_CHECK(x.device().is_cpu(), "skinny_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == dtype, "skinny_linear: input dtype ", x.scalar_type(), " != weight dtype ", dtype);
  TORCH_CHECK(x.dim() >= 1, "skinny_linear: the input needs a feature dimension");
  const int64_t K = x.size(-1);
  std::vector<at::Tensor> ys, contiguous_biases;
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& weight = weights[i];
    TORCH_CHECK(weight.device().is_cpu(), "skinny_linear: CPU tensors only");
    TORCH_CHECK(weight.scalar_type() == dtype, "skinny_linear_group: weights of different dtypes");
    TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(), "skinny_linear: weight must be a contiguous matrix");
    TORCH_CHECK(weight.size(1) == K, "skinny_linear: input features ", K, " != weight's ", weight.size(1));
    const int64_t N = weight.size(0);
    const at::Tensor bias = i < biases.size() ? biases[i] : at::Tensor();
    if (bias.defined()) {
      TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == dtype && bias.dim() == 1 && bias.size(0) == N,
                  "skinny_linear: bias must be a CPU [", N, "] tensor of the weight's dtype");
    }
    contiguous_biases.push_back(bias.defined() ? bias.contiguous() : bias);
    auto out_sizes = x.sizes().vec();
    out_sizes.back() = N;
    ys.push_back(at::empty(out_sizes, weight.options().requires_grad(false)));
  }
  const int64_t M = K == 0 ? 0 : x.numel() / K;
  if (M == 0) return ys;
  if (K == 0) {
    for (size_t i = 0; i < ys.size(); ++i)
      contiguous_biases[i].defined() ? ys[i].copy_(contiguous_biases[i].expand_as(ys[i])) : ys[i].zero_();
    return ys;
  }
  if (dtype == at::kFloat) run_isa<float>(isa, x, weights, contiguous_biases, ys);
  else run_isa<c10::BFloat16>(isa, x, weights, contiguous_biases, ys);
  return ys;
}

int64_t skinny_linear_max_rows(at::ScalarType dtype) { return has_avx2() ? max_rows(dtype) : 0; }

namespace {
bool needs_grad(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::GradMode::is_enabled() &&
         (x.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
}
}  // namespace

bool use_skinny_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!has_avx2() || !x.defined() || !weight.defined()) return false;
  if (!x.device().is_cpu() || !weight.device().is_cpu()) return false;
  const auto dtype = weight.scalar_type();
  if (x.scalar_type() != dtype || weight.dim() != 2 || !weight.is_contiguous() || x.dim() < 1) return false;
  const int64_t K = weight.size(1);
  if (K == 0 || x.size(-1) != K) return false;
  const int64_t M = x.numel() / K;
  if (M < 1 || M > max_rows(dtype)) return false;
  if (bias.defined() && (!bias.device().is_cpu() || bias.scalar_type() != dtype || bias.dim() != 1 ||
                         bias.size(0) != weight.size(0)))
    return false;
  return !needs_grad(x, weight, bias);  // the kernel has no backward
}

bool use_upcast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (!x.defined() || !weight.defined() || torch_has_fast_bf16()) return false;
  if (!x.device().is_cpu() || !weight.device().is_cpu()) return false;
  if (x.scalar_type() != at::kBFloat16 || weight.scalar_type() != at::kBFloat16) return false;
  if (bias.defined() && (bias.scalar_type() != at::kBFloat16 || !bias.device().is_cpu())) return false;
  return true;
}

namespace {

// The bf16 GEMM as oneDNN computes it (exact bf16 products, fp32 sums, output rounded once to bf16), on sgemm:
// upcasting costs one pass over each operand, small next to the M x N x K product at these row counts.
at::Tensor upcast(const at::Tensor& t) { return t.defined() ? t.to(at::kFloat) : t; }
at::Tensor upcast_gemm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(upcast(x), upcast(weight), upcast(bias)).to(at::kBFloat16);
}

// Training's bf16 linear on the same sgemm: the backward's two GEMMs (and the bias sum) in fp32, each gradient
// rounded once to bf16, as a native bf16 backward rounds them. Only the bf16 operands are saved, so the memory
// kept for backward is what at::linear would keep.
class UpcastLinearFunction : public torch::autograd::Function<UpcastLinearFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const at::Tensor& bias) {
    ctx->save_for_backward({x, weight});
    return upcast_gemm(x, weight, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const int64_t N = weight.size(0), K = weight.size(1);
    auto grad = grad_outputs[0].to(at::kFloat).reshape({-1, N});  // [M, N]
    at::Tensor grad_x, grad_weight, grad_bias;
    if (ctx->needs_input_grad(0)) grad_x = grad.mm(upcast(weight)).to(at::kBFloat16).view(x.sizes());
    if (ctx->needs_input_grad(1)) grad_weight = grad.t().mm(upcast(x).reshape({-1, K})).to(at::kBFloat16);
    if (ctx->needs_input_grad(2)) grad_bias = grad.sum(0).to(at::kBFloat16);
    return {grad_x, grad_weight, grad_bias};
  }
};

}  // namespace

at::Tensor fast_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (use_skinny_linear(x, weight, bias)) return skinny_linear(x, weight, bias);
  if (use_upcast_linear(x, weight, bias)) {
    if (!needs_grad(x, weight, bias)) return upcast_gemm(x, weight, bias);
    // A custom Function's tensor inputs must be defined: no bias is a zero bias that needs no gradient.
    const at::Tensor b = bias.defined() ? bias : at::zeros({weight.size(0)}, weight.options());
    return UpcastLinearFunction::apply(x, weight, b);
  }
  if (use_onednn_linear(x, weight, bias)) return onednn_linear(x, weight, bias);
  return at::linear(x, weight, bias);
}

}  // namespace dschat
