#pragma once
// fp32 linears (forward and backward) on oneDNN's GEMM where LibTorch's MKL sgemm is slow. MKL runs its AVX2
// kernels on AMD CPUs, so on an AMD CPU with AVX-512 (Zen 4, Zen 5) the oneDNN bundled in LibTorch, whose JIT
// picks kernels by instruction set rather than vendor, does the same fp32 products 2-2.8x faster at training
// shapes (Zen 5, 2 threads: 2048^3 peak 182 -> 402 GFLOP/s, tools/bench/machine.py gemm_line; a PPO iteration
// 1.81x, bench_ppo.py's dschat-mkl row). Both are IEEE fp32 GEMMs; only the summation order differs.
//
// DSCHAT_CPU_GEMM = auto (default: oneDNN on AMD CPUs with AVX-512F, else MKL) | onednn | mkl.
#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// "onednn" or "mkl": what fp32 CPU linears run on in this process (DSCHAT_CPU_GEMM, read once).
DSCHAT_SDK_API const char* cpu_gemm_backend();

// Whether fast_linear runs these arguments on onednn_linear: the backend is oneDNN, and x, weight [N, K]
// (and bias [N]) are fp32 CPU tensors.
DSCHAT_SDK_API bool use_onednn_linear(const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias = at::Tensor());

// y = x W^T + b on oneDNN's matmul, differentiable in x, weight and bias (the backward's two GEMMs on oneDNN too).
DSCHAT_SDK_API at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight,
                                        const at::Tensor& bias = at::Tensor());

}  // namespace dschat
