#pragma once
// Multi-head / grouped-query self-attention on at::scaled_dot_product_attention, with an optional KV cache.
//
// Masks are explicit and additive: SDPA's is_causal aligns the triangle to the top left, which is wrong as soon
// as a KV cache holds earlier tokens and more than one query arrives, and it cannot express left padding.
// The model builds one AttentionInputs per forward pass (positions, mask, rotary tables) and every block reuses
// it.
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "dschat/sdk/export.h"
#include "dschat/sdk/nn/kv_cache.h"
#include "dschat/sdk/nn/linear.h"

namespace dschat {

struct AttentionInputs {
  at::Tensor attention_mask;  // [B, past + T], 1 for real tokens, 0 for (left) padding
  at::Tensor position_ids;    // [B, T] int64: cumsum(mask) - 1 over the whole sequence, 0 at padding
  at::Tensor bias;            // additive [B, 1 or H, T, past + T] in the compute dtype: 0 allowed, lowest masked
  at::Tensor rope_cos;        // [B, T, rotary dims <= head_dim] for rotary models, else undefined
  at::Tensor rope_sin;
  int64_t past_length = 0;    // tokens already in the KV cache
  // Static KV cache (KvCache::write_position): [1] int64 on the model's device, the cache column this one-token
  // step writes. The step then attends over the whole cache (the mask hides columns not yet written), so every
  // shape is the same from step to step and a CUDA graph can replay it.
  at::Tensor write_position;
};

// Positions as HF computes them for left-padded batches: cumsum(mask) - 1, with padding at 0 (generate's
// convention). Returns the last `new_tokens` columns.
DSCHAT_SDK_API at::Tensor positions_from_mask(const at::Tensor& attention_mask, int64_t new_tokens);

// The additive causal + padding mask [B, 1, T, S] (S = past + T) in `dtype`. Query i (absolute position
// past + i) sees key j iff j <= past + i and attention_mask[b, j] == 1. The masked value is the dtype's lowest
// finite number, not -inf: a query row that sees nothing (a padding position) then gets a uniform softmax
// instead of NaN, and NaN never reaches the real tokens through the keys and values of padding positions.
DSCHAT_SDK_API at::Tensor causal_padding_bias(const at::Tensor& attention_mask, int64_t past_length,
                                              int64_t new_tokens, at::ScalarType dtype);
DSCHAT_SDK_API double lowest_value(at::ScalarType dtype);

// The cache-aware core shared by every attention layout: q [B, H, T, D], k/v [B, H_kv, T, D] (rotary already
// applied). Appends k/v to `kv` at inputs.past_length when given (at inputs.write_position for a static cache).
// Returns [B, T, H * D].
DSCHAT_SDK_API at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const AttentionInputs& inputs, LayerKv* kv, double scale, double dropout,
                                 bool training);

struct AttentionOptions {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // 0: same as num_heads (multi-head); fewer: grouped-query
  int64_t head_dim = 0;      // 0: hidden_size / num_heads
  bool qkv_bias = true;
  bool out_bias = true;
  double dropout = 0.0;
  // Weight names as the HF checkpoint spells them.
  std::string q_name = "q_proj", k_name = "k_proj", v_name = "v_proj", out_name = "out_proj";
  // BLOOM: one fused projection whose rows are laid out [num_heads, 3 (q, k, v), head_dim].
  bool fused_qkv = false;
  std::string qkv_name = "query_key_value";
};

class DSCHAT_SDK_API AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(AttentionOptions options);
  // hidden [B, T, hidden]; applies rotary embeddings when inputs.rope_cos is defined.
  at::Tensor forward(const at::Tensor& hidden, const AttentionInputs& inputs, LayerKv* kv = nullptr);
  const AttentionOptions& options() const { return options_; }

  // Tensor parallelism: this layer keeps heads [rank * H / size, (rank + 1) * H / size) (and the matching kv
  // heads); options() then counts local heads. The caller slices the projections' weights (tensor_parallel.h).
  // A per-head bias in AttentionInputs (ALiBi) stays the whole model's and is narrowed to these heads here, so
  // every head keeps its global slope.
  void shard_heads(int64_t rank, int64_t size);
  int64_t head_offset() const { return head_offset_; }

  LoraLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, qkv_proj{nullptr}, out_proj{nullptr};

 private:
  AttentionOptions options_;
  int64_t head_offset_ = 0;
  int64_t total_heads_ = 0;  // the whole model's head count once sharded; 0: not sharded
};
TORCH_MODULE(Attention);

}  // namespace dschat
