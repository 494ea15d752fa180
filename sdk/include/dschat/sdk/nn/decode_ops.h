#pragma once
// RMSNorm, rotary embeddings, SwiGLU's product and the greedy pick of a decode step, each in one vectorized pass instead of LibTorch's chain of
// small ops (8 for HF's RMSNorm, 7 for rotate_half): at decode a step runs them 4 x layers times over a few
// hundred elements, where LibTorch's per-op cost outweighs the arithmetic. They round where HF's ops round
// (fp32 math, each intermediate HF keeps in the model dtype rounded to it), so the results equal the op chains
// up to the order of one fp32 sum.
//
// Each returns an undefined tensor where it does not apply (then the caller runs the op chain): not CPU, not
// fp32/bf16, autograd needed, more than a decode step's elements, a shape the vector loop does not take, or a
// CPU without AVX-512 (AVX-512-BF16 for bf16: its vcvtneps2bf16 rounds as c10::BFloat16 does).
#include <utility>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// HF LlamaRMSNorm: weight * (x * rsqrt(mean(x^2) + eps)).to(dtype), x [..., D], weight [D].
DSCHAT_SDK_API at::Tensor rms_norm_decode(const at::Tensor& x, const at::Tensor& weight, double eps);

// HF's SwiGLU product act_fn(gate) * up with SiLU: gate and up contiguous, of one shape.
DSCHAT_SDK_API at::Tensor silu_mul_decode(const at::Tensor& gate, const at::Tensor& up);

// The greedy pick of a decode step: per row of logits [N, V] (unit stride along V), the first index of the
// largest logit and its log-probability (logit - logsumexp over the row) as fp32, in two passes over the row,
// rows split over LibTorch's threads; ATen takes an fp32 copy, argmax and logsumexp (~0.7 ms a step at
// SmolLM2's 49152-token vocabulary and batch 8, against ~0.1 ms). {} where it does not apply (or a row has a NaN).
DSCHAT_SDK_API std::pair<at::Tensor, at::Tensor> greedy_pick_decode(const at::Tensor& logits);

// x * cos + rotate_half(x) * sin, x [B, H, T, D] with unit stride along D, cos/sin [B, T, D] in x's dtype.
DSCHAT_SDK_API at::Tensor rotary_decode(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace dschat
