#include "dschat/sdk/nn/attention.h"

#include <limits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "dschat/sdk/nn/decode_attention.h"
#include "dschat/sdk/nn/rotary.h"

namespace dschat {

KvCache KvCache::allocate(int64_t num_layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_dim,
                          const at::TensorOptions& options) {
  TORCH_CHECK(num_layers > 0 && batch > 0 && kv_heads > 0 && capacity > 0 && head_dim > 0,
              "KvCache::allocate: every size must be positive (layers ", num_layers, ", batch ", batch,
              ", kv_heads ", kv_heads, ", capacity ", capacity, ", head_dim ", head_dim, ")");
  KvCache cache;
  cache.layers.reserve(num_layers);
  for (int64_t i = 0; i < num_layers; ++i) {
    cache.layers.push_back({at::zeros({batch, kv_heads, capacity, head_dim}, options),
                            at::zeros({batch, kv_heads, capacity, head_dim}, options)});
  }
  return cache;
}

int64_t KvCache::capacity() const { return layers.empty() ? 0 : layers.front().key.size(2); }
int64_t KvCache::batch_size() const { return layers.empty() ? 0 : layers.front().key.size(0); }

void KvCache::select_rows(const at::Tensor& index) {
  for (auto& layer : layers) {
    layer.key = layer.key.index_select(0, index.to(layer.key.device()));
    layer.value = layer.value.index_select(0, index.to(layer.value.device()));
  }
}

at::Tensor positions_from_mask(const at::Tensor& attention_mask, int64_t new_tokens) {
  TORCH_CHECK(attention_mask.dim() == 2, "attention_mask must be [batch, length], got ", attention_mask.sizes());
  TORCH_CHECK(new_tokens <= attention_mask.size(1), "attention_mask covers ", attention_mask.size(1),
              " tokens, fewer than the ", new_tokens, " new ones");
  auto mask = attention_mask.to(at::kLong);
  auto positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 0);
  return positions.narrow(1, attention_mask.size(1) - new_tokens, new_tokens);
}

double lowest_value(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return std::numeric_limits<float>::lowest();
    case at::kDouble: return std::numeric_limits<double>::lowest();
    case at::kBFloat16: return static_cast<float>(std::numeric_limits<c10::BFloat16>::lowest());
    case at::kHalf: return static_cast<float>(std::numeric_limits<c10::Half>::lowest());
    default: TORCH_CHECK(false, "attention masks need a floating dtype, got ", dtype);
  }
}

at::Tensor causal_padding_bias(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                               at::ScalarType dtype) {
  const int64_t total = attention_mask.size(1);
  TORCH_CHECK(total == past_length + new_tokens, "attention_mask has ", total, " columns; expected past (",
              past_length, ") + new tokens (", new_tokens, ")");
  auto device = attention_mask.device();
  auto query_pos = at::arange(past_length, total, at::TensorOptions().dtype(at::kLong).device(device));
  auto key_pos = at::arange(total, at::TensorOptions().dtype(at::kLong).device(device));
  auto causal = key_pos.unsqueeze(0) <= query_pos.unsqueeze(1);                  // [T, S]
  auto allowed = causal.unsqueeze(0) & (attention_mask.unsqueeze(1) != 0);       // [B, T, S]
  auto bias = at::zeros(allowed.sizes(), at::TensorOptions().dtype(dtype).device(device));
  bias.masked_fill_(allowed.logical_not(), lowest_value(dtype));
  return bias.unsqueeze(1);  // [B, 1, T, S]
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionInputs& inputs,
                  LayerKv* kv, double scale, double dropout, bool training) {
  const int64_t batch = q.size(0), heads = q.size(1), tokens = q.size(2), head_dim = q.size(3);
  at::Tensor keys = k, values = v;
  if (kv != nullptr && inputs.write_position.defined()) {
    TORCH_CHECK(tokens == 1, "a static KV cache takes one token per step, got ", tokens);
    kv->key.index_copy_(2, inputs.write_position, k);
    kv->value.index_copy_(2, inputs.write_position, v);
    keys = kv->key;
    values = kv->value;
  } else if (kv != nullptr) {
    const int64_t end = inputs.past_length + tokens;
    TORCH_CHECK(kv->key.defined() && kv->key.size(0) == batch && kv->key.size(1) == k.size(1) &&
                    kv->key.size(3) == head_dim,
                "KV cache layout ", kv->key.defined() ? kv->key.sizes() : at::IntArrayRef{},
                " does not match keys ", k.sizes());
    TORCH_CHECK(end <= kv->key.size(2), "KV cache is full: ", inputs.past_length, " cached + ", tokens,
                " new tokens exceed its capacity of ", kv->key.size(2));
    kv->key.narrow(2, inputs.past_length, tokens).copy_(k);
    kv->value.narrow(2, inputs.past_length, tokens).copy_(v);
    keys = kv->key.narrow(2, 0, end);
    values = kv->value.narrow(2, 0, end);
  }
  TORCH_CHECK(inputs.bias.defined(), "attention called without a mask; build AttentionInputs with prepare()");
  TORCH_CHECK(inputs.bias.size(-1) == keys.size(2) && inputs.bias.size(-2) == tokens, "attention mask ",
              inputs.bias.sizes(), " does not cover ", tokens, " queries over ", keys.size(2), " keys");
  if (!(training && dropout > 0) && use_decode_attention(q, keys, values, inputs.bias)) {
    auto out = decode_attention(q, keys, values, inputs.bias, scale);  // a decode step over the KV cache
    return out.transpose(1, 2).reshape({batch, tokens, heads * head_dim});
  }
  const bool grouped = keys.size(1) != heads;
  auto out = at::scaled_dot_product_attention(q, keys, values, inputs.bias.to(q.scalar_type()),
                                              training ? dropout : 0.0, /*is_causal=*/false, scale, grouped);
  return out.transpose(1, 2).reshape({batch, tokens, heads * head_dim});
}

AttentionImpl::AttentionImpl(AttentionOptions options) : options_(std::move(options)) {
  auto& o = options_;
  TORCH_CHECK(o.hidden_size > 0 && o.num_heads > 0, "attention needs hidden_size and num_heads > 0");
  if (o.num_kv_heads == 0) o.num_kv_heads = o.num_heads;
  if (o.head_dim == 0) {
    TORCH_CHECK(o.hidden_size % o.num_heads == 0, "hidden_size ", o.hidden_size,
                " is not a multiple of num_heads ", o.num_heads);
    o.head_dim = o.hidden_size / o.num_heads;
  }
  TORCH_CHECK(o.num_heads % o.num_kv_heads == 0, "num_attention_heads ", o.num_heads,
              " is not a multiple of num_key_value_heads ", o.num_kv_heads);
  const int64_t q_out = o.num_heads * o.head_dim, kv_out = o.num_kv_heads * o.head_dim;
  if (o.fused_qkv) {
    TORCH_CHECK(o.num_kv_heads == o.num_heads, "a fused qkv projection needs as many kv heads as heads");
    qkv_proj = register_module(o.qkv_name, LoraLinear(o.hidden_size, 3 * q_out, o.qkv_bias));
  } else {
    q_proj = register_module(o.q_name, LoraLinear(o.hidden_size, q_out, o.qkv_bias));
    k_proj = register_module(o.k_name, LoraLinear(o.hidden_size, kv_out, o.qkv_bias));
    v_proj = register_module(o.v_name, LoraLinear(o.hidden_size, kv_out, o.qkv_bias));
  }
  out_proj = register_module(o.out_name, LoraLinear(q_out, o.hidden_size, o.out_bias));
}

at::Tensor AttentionImpl::forward(const at::Tensor& hidden, const AttentionInputs& inputs, LayerKv* kv) {
  const auto& o = options_;
  const int64_t batch = hidden.size(0), tokens = hidden.size(1);
  at::Tensor q, k, v;
  if (o.fused_qkv) {
    // BLOOM's rows are [head][q|k|v][head_dim]: view as [B, T, H, 3, D] and pick the middle index.
    auto fused = qkv_proj->forward(hidden).view({batch, tokens, o.num_heads, 3, o.head_dim});
    q = fused.select(3, 0).transpose(1, 2);
    k = fused.select(3, 1).transpose(1, 2);
    v = fused.select(3, 2).transpose(1, 2);
  } else {
    auto qkv = forward_group(hidden, {q_proj.get(), k_proj.get(), v_proj.get()});
    q = qkv[0].view({batch, tokens, o.num_heads, o.head_dim}).transpose(1, 2);
    k = qkv[1].view({batch, tokens, o.num_kv_heads, o.head_dim}).transpose(1, 2);
    v = qkv[2].view({batch, tokens, o.num_kv_heads, o.head_dim}).transpose(1, 2);
  }
  if (inputs.rope_cos.defined()) {
    q = apply_rotary(q, inputs.rope_cos, inputs.rope_sin);
    k = apply_rotary(k, inputs.rope_cos, inputs.rope_sin);
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(o.head_dim));
  if (total_heads_ != 0 && inputs.bias.defined() && inputs.bias.size(1) == total_heads_ &&
      total_heads_ != o.num_heads) {
    AttentionInputs local = inputs;
    local.bias = inputs.bias.narrow(1, head_offset_, o.num_heads);
    return out_proj->forward(attend(q, k, v, local, kv, scale, o.dropout, is_training()));
  }
  auto context = attend(q, k, v, inputs, kv, scale, o.dropout, is_training());
  return out_proj->forward(context);
}

void AttentionImpl::shard_heads(int64_t rank, int64_t size) {
  auto& o = options_;
  TORCH_CHECK(total_heads_ == 0, "attention heads are already sharded");
  TORCH_CHECK(size > 0 && rank >= 0 && rank < size, "shard_heads: rank ", rank, " outside a group of ", size);
  TORCH_CHECK(o.num_heads % size == 0, "tensor parallelism over ", size, " ranks needs the attention head count (",
              o.num_heads, ") to be a multiple of ", size);
  TORCH_CHECK(o.num_kv_heads % size == 0, "tensor parallelism over ", size,
              " ranks needs the key/value head count (", o.num_kv_heads, ") to be a multiple of ", size);
  total_heads_ = o.num_heads;
  o.num_heads /= size;
  o.num_kv_heads /= size;
  head_offset_ = rank * o.num_heads;
}

}  // namespace dschat
