#pragma once
// Token embeddings and OPT's learned positions.
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "dschat/sdk/export.h"

namespace dschat {

class DSCHAT_SDK_API TokenEmbeddingImpl : public torch::nn::Module {
 public:
  TokenEmbeddingImpl(int64_t num_embeddings, int64_t dim);
  // Ids outside [0, num_embeddings) are an error naming the offending id (not an out-of-bounds read).
  at::Tensor forward(const at::Tensor& ids);
  at::Tensor weight;  // [num_embeddings, dim]
};
TORCH_MODULE(TokenEmbedding);

// OPT's learned absolute positions: the table has max_positions + offset rows and position p reads row p + offset
// (offset 2, a fairseq leftover).
class DSCHAT_SDK_API LearnedPositionalEmbeddingImpl : public torch::nn::Module {
 public:
  LearnedPositionalEmbeddingImpl(int64_t max_positions, int64_t dim, int64_t offset = 2);
  at::Tensor forward(const at::Tensor& position_ids);  // [B, T] -> [B, T, dim]
  at::Tensor weight;  // [max_positions + offset, dim]
  int64_t offset;
};
TORCH_MODULE(LearnedPositionalEmbedding);

}  // namespace dschat
