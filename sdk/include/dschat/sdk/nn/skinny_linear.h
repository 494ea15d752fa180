#pragma once
// y = x W^T + b for a few rows of x (a decode step: one new token per sequence) on the CPU.
//
// LibTorch's at::linear (MKL sgemm / oneDNN) reads a big W at a fraction of memory bandwidth at these skinny
// shapes; skinny_linear reads W exactly once, computing all M dot products per row of W (fp32 accumulation),
// split over LibTorch's threads along the output features, with a loop per instruction set chosen at run time:
// AVX-512-BF16 (vdpbf16ps on bf16 pairs), AVX-512F and AVX2 (bf16 widened exactly to fp32), scalar. fast_linear
// picks it only where it measured faster and no gradient is needed, so training and prefill keep at::linear
// (bf16 on CPUs without oneDNN's bf16 GEMM takes fp32 GEMMs instead: use_upcast_linear).
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// The vector instruction sets the kernel has a loop for; the best one the CPU has is used unless one is named
// (tests and benchmarks run every loop the machine can).
enum class SkinnyIsa { kScalar, kAvx2, kAvx512, kAvx512Bf16 };
DSCHAT_SDK_API const char* skinny_isa_name(SkinnyIsa isa);
DSCHAT_SDK_API bool skinny_isa_supported(SkinnyIsa isa);
DSCHAT_SDK_API SkinnyIsa skinny_best_isa();

// The kernel: x [..., K], weight [N, K] contiguous, bias [N] or undefined, all CPU and all fp32 or all bf16.
// Any number of rows works; rows past 8 are done in chunks of 8 over cache-resident tiles of W. No autograd.
DSCHAT_SDK_API at::Tensor skinny_linear(const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& bias = at::Tensor());
DSCHAT_SDK_API at::Tensor skinny_linear(SkinnyIsa isa, const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& bias = at::Tensor());

// Several linears of one input in one pass (q, k and v; gate and up): skinny_linear of each weight, with one
// fork-join for the group and its threads' work split over all of the group's rows. biases: empty, or one per
// weight (undefined for none). The weights share K and a dtype.
DSCHAT_SDK_API std::vector<at::Tensor> skinny_linear_group(const at::Tensor& x, at::TensorList weights,
                                                           at::TensorList biases = {});
DSCHAT_SDK_API std::vector<at::Tensor> skinny_linear_group(SkinnyIsa isa, const at::Tensor& x,
                                                           at::TensorList weights, at::TensorList biases = {});

// Whether fast_linear would run skinny_linear for these arguments: CPU with AVX2+FMA, supported dtypes and
// layout, no gradient needed and rows <= skinny_linear_max_rows (per dtype, and for bf16 per whether LibTorch
// has oneDNN's bf16 GEMM: the measurements are in skinny_linear.cpp).
DSCHAT_SDK_API bool use_skinny_linear(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias = at::Tensor());
DSCHAT_SDK_API int64_t skinny_linear_max_rows(at::ScalarType dtype);

// Whether fast_linear would run a bf16 linear as fp32 GEMMs on upcast operands (backward included): bf16 CPU
// tensors on a CPU where LibTorch's bf16 GEMM is its generic fallback (no oneDNN bf16 kernels: no AVX-512).
DSCHAT_SDK_API bool use_upcast_linear(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias = at::Tensor());

// skinny_linear where use_skinny_linear says so, else the upcast GEMM where use_upcast_linear says so, else
// oneDNN's fp32 GEMM where use_onednn_linear says so (onednn_linear.h), else at::linear. Layers call this
// instead of at::linear.
DSCHAT_SDK_API at::Tensor fast_linear(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias = at::Tensor());

}  // namespace dschat
