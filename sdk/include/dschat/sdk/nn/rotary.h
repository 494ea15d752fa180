#pragma once
// Rotary position embeddings (LLaMA), with HF's rope_scaling types: none ("default"), "linear", "dynamic"
// (NTK, recomputed when a sequence outgrows max_position_embeddings) and "llama3" (LLaMA-3.1 frequency bands).
#include <cstdint>
#include <string>
#include <utility>

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include "dschat/sdk/export.h"

namespace dschat {

struct DSCHAT_SDK_API RopeConfig {
  std::string type = "default";  // default | linear | dynamic | llama3
  double theta = 10000.0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 2048;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;  // llama3; 0: max_position_embeddings

  // Reads rope_theta and rope_scaling (transformers 4.x) or rope_parameters (5.x) from an HF config.json.
  // Unknown types are an error naming the type and the supported ones.
  static RopeConfig from_hf(const nlohmann::json& config, int64_t head_dim);
};

// inv_freq [head_dim / 2] in float32, exactly as transformers computes it for `seq_len` (only "dynamic" uses it).
DSCHAT_SDK_API at::Tensor rope_inv_freq(const RopeConfig& config, int64_t seq_len = 0);

// cos/sin tables [B, T, head_dim] for position_ids [B, T], in `dtype` (computed in float32 first, as HF does).
DSCHAT_SDK_API std::pair<at::Tensor, at::Tensor> rope_cos_sin(const RopeConfig& config, const at::Tensor& position_ids,
                                                              at::ScalarType dtype);

// x [B, H, T, D] -> x * cos + rotate_half(x) * sin, with cos/sin [B, T, R]. R < D is partial rotary (GPT-NeoX's
// rotary_pct, Phi's partial_rotary_factor): the first R features of each head turn and the rest pass unchanged;
// build the tables from a RopeConfig whose head_dim is R.
DSCHAT_SDK_API at::Tensor apply_rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace dschat
