#pragma once
// Attention of one new token per sequence over its KV cache (a decode step) on the CPU.
//
// LibTorch's scaled_dot_product_attention takes its flash kernel here, which for q_len 1 runs one small GEMM per
// head inside its own parallel loop: in bf16 those are MKL gemv calls that open nested OpenMP regions, and a
// bf16 decode step on SmolLM2-135M (batch 8, 2 threads, Zen 4) spent ~half its time there and spinning in
// libgomp. decode_attention reads each cached key and value once per step for all the query heads that share it
// (grouped-query attention), in one parallel loop over (batch, kv head): q.k in fp32 sums (vdpbf16ps for bf16
// where the CPU has it), at::softmax over the fp32 scores, then p.V accumulated in fp32.
#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// q [B, H, 1, D]; keys, values [B, Hkv, S, D] with H a multiple of Hkv and unit stride along D (a narrowed KV
// cache is fine); bias [B, 1 or H, 1, S] additive (the padding mask, ALiBi), any floating dtype. Returns
// [B, H, 1, D] in q's dtype: softmax(q k^T * scale + bias) v, computed in fp32. No autograd.
DSCHAT_SDK_API at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                                           const at::Tensor& bias, double scale);

// Whether attend() takes decode_attention for these arguments: CPU, one query position, fp32 or bf16, the
// layouts above, no gradient needed, and a CPU with AVX-512 (elsewhere SDPA keeps the step: not measured there).
DSCHAT_SDK_API bool use_decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                                         const at::Tensor& bias);

}  // namespace dschat
