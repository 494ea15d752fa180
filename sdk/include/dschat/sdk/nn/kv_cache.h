#pragma once
// A preallocated key/value cache for incremental decoding. Each layer owns two buffers
// [batch, kv_heads, capacity, head_dim]; a forward pass writes its new keys/values in place at
// [length, length + new_tokens) and attends over [0, length + new_tokens). The model advances `length` once
// every layer has run, so a strategy wrapping the blocks never touches it.
//
// Static mode (GPU decoding with CUDA graphs): set `write_position` to a [1] int64 tensor on the model's device.
// Each forward then takes one token, writes its keys/values at that column and attends over the whole capacity
// with an attention mask of [batch, capacity] (columns not written yet are 0). Nothing on the host changes from
// step to step: the caller advances write_position on the device, and `length` is left alone.
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

struct LayerKv {
  at::Tensor key;    // [B, H_kv, capacity, D]
  at::Tensor value;  // [B, H_kv, capacity, D]
};

struct DSCHAT_SDK_API KvCache {
  std::vector<LayerKv> layers;
  int64_t length = 0;  // tokens already stored (the same for every row; left padding is masked, not skipped)
  at::Tensor write_position;  // static mode when defined (above)

  static KvCache allocate(int64_t num_layers, int64_t batch, int64_t kv_heads, int64_t capacity,
                          int64_t head_dim, const at::TensorOptions& options);
  int64_t capacity() const;
  int64_t batch_size() const;
  void reset() { length = 0; }
  // Keeps only the rows in `index` (a 1-D int64 tensor), e.g. to drop finished sequences.
  void select_rows(const at::Tensor& index);
};

}  // namespace dschat
