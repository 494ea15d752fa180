#pragma once
// ALiBi (BLOOM): a per-head linear bias on attention scores, exactly as transformers' build_alibi_tensor.
#include <cstdint>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// Slopes [num_heads] float32; for a head count that is not a power of two, the extra heads take every other
// slope of the next power of two (HF's _get_alibi_slopes).
DSCHAT_SDK_API at::Tensor alibi_slopes(int64_t num_heads);

// Bias [B, H, 1, S] in `dtype`: slope_h * ((cumsum(mask) - 1) * mask)[b, s], i.e. by key position counted from
// the first real token. (Adding it to the scores is ALiBi up to a per-row constant, which softmax ignores.)
DSCHAT_SDK_API at::Tensor alibi_bias(const at::Tensor& attention_mask, int64_t num_heads, at::ScalarType dtype);

}  // namespace dschat
