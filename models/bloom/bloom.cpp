// BLOOM (bigscience/bloom*): config.json mapping, block wiring and weight names, top to bottom.
//
// Names as in transformers' BloomForCausalLM: transformer.word_embeddings.weight,
//   transformer.word_embeddings_layernorm.*, transformer.h.<i>.input_layernorm.*,
//   transformer.h.<i>.self_attention.query_key_value.* (fused, rows [num_heads][q|k|v][head_dim]),
//   transformer.h.<i>.self_attention.dense.*, transformer.h.<i>.post_attention_layernorm.*,
//   transformer.h.<i>.mlp.dense_{h_to_4h,4h_to_h}.*, transformer.ln_f.*; the head is tied to the embeddings.
// Positions come only from ALiBi; the feed-forward is GELU (tanh).
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/modulelist.h>

#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/alibi.h"
#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/embedding.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/nn/mlp.h"
#include "dschat/sdk/nn/norm.h"
#include "dschat/sdk/nn/skinny_linear.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

struct BloomConfig {
  int64_t vocab_size, hidden_size, num_layers, num_heads;
  double layer_norm_epsilon;
  bool residual_post_layernorm;

  static BloomConfig from_hf(const nlohmann::json& c) {
    BloomConfig o{};
    o.vocab_size = hf_int(c, "vocab_size");
    // Older BLOOM configs spell these n_embed / num_hidden_layers / num_attention_heads.
    o.hidden_size = c.contains("hidden_size") ? hf_int(c, "hidden_size") : hf_int(c, "n_embed");
    o.num_layers = c.contains("n_layer") ? hf_int(c, "n_layer") : hf_int(c, "num_hidden_layers");
    o.num_heads = c.contains("n_head") ? hf_int(c, "n_head") : hf_int(c, "num_attention_heads");
    o.layer_norm_epsilon = hf_float(c, "layer_norm_epsilon", 1e-5);
    o.residual_post_layernorm = hf_bool(c, "apply_residual_connection_post_layernorm", false);
    for (auto [key, value] : {std::pair{"vocab_size", o.vocab_size}, {"hidden_size", o.hidden_size},
                              {"n_layer", o.num_layers}, {"n_head", o.num_heads}}) {
      if (value <= 0) throw CheckpointError(std::string("config.json: '") + key + "' must be positive");
    }
    if (o.hidden_size % o.num_heads != 0) {
      throw CheckpointError("config.json: hidden_size " + std::to_string(o.hidden_size) +
                            " is not a multiple of n_head " + std::to_string(o.num_heads));
    }
    if (hf_int(c, "pretraining_tp", 1) > 1 && hf_bool(c, "slow_but_exact", false)) {
      throw CheckpointError("config.json: slow_but_exact with pretraining_tp > 1 is not supported");
    }
    return o;
  }
};

class BloomBlock : public DecoderBlock {
 public:
  explicit BloomBlock(const BloomConfig& c) : residual_post_layernorm_(c.residual_post_layernorm) {
    input_layernorm = register_module("input_layernorm", LayerNorm(c.hidden_size, c.layer_norm_epsilon));
    AttentionOptions attention;
    attention.hidden_size = c.hidden_size;
    attention.num_heads = c.num_heads;
    attention.fused_qkv = true;
    attention.qkv_name = "query_key_value";
    attention.out_name = "dense";
    self_attention = register_module("self_attention", Attention(attention));
    post_attention_layernorm = register_module("post_attention_layernorm", LayerNorm(c.hidden_size, c.layer_norm_epsilon));
    MlpOptions mlp_options{c.hidden_size, 4 * c.hidden_size, Activation::gelu_tanh, true, "dense_h_to_4h",
                           "dense_4h_to_h"};
    mlp = register_module("mlp", Mlp(mlp_options));
  }

  at::Tensor forward(const at::Tensor& hidden, const AttentionInputs& inputs, LayerKv* kv) override {
    auto normed = input_layernorm->forward(hidden);
    auto attention = self_attention->forward(normed, inputs, kv) + (residual_post_layernorm_ ? normed : hidden);
    normed = post_attention_layernorm->forward(attention);
    return mlp->forward(normed) + (residual_post_layernorm_ ? normed : attention);
  }

  LayerNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attention{nullptr};
  Mlp mlp{nullptr};

 private:
  bool residual_post_layernorm_;
};

class BloomModel : public torch::nn::Module {
 public:
  explicit BloomModel(const BloomConfig& c) {
    word_embeddings = register_module("word_embeddings", TokenEmbedding(c.vocab_size, c.hidden_size));
    word_embeddings_layernorm = register_module("word_embeddings_layernorm", LayerNorm(c.hidden_size, c.layer_norm_epsilon));
    h = register_module("h", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i) {
      auto block = std::make_shared<BloomBlock>(c);
      h->push_back(block);
      blocks.push_back(block);
    }
    ln_f = register_module("ln_f", LayerNorm(c.hidden_size, c.layer_norm_epsilon));
  }

  TokenEmbedding word_embeddings{nullptr};
  LayerNorm word_embeddings_layernorm{nullptr}, ln_f{nullptr};
  torch::nn::ModuleList h{nullptr};
  std::vector<std::shared_ptr<DecoderBlock>> blocks;
};

class BloomForCausalLM : public CausalLM {
 public:
  BloomForCausalLM(const BloomConfig& c, const nlohmann::json& hf_config)
      : CausalLM(ModelDims{c.vocab_size, c.hidden_size, c.hidden_size, c.num_layers, c.num_heads, c.num_heads,
                           c.hidden_size / c.num_heads, 0},
                 hf_config) {
    transformer = register_module("transformer", std::make_shared<BloomModel>(c));
    set_blocks(transformer->blocks);
  }

  // ALiBi joins the causal/padding mask: [B, 1, T, S] + [B, H, 1, S] -> [B, H, T, S].
  AttentionInputs prepare(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                          at::ScalarType dtype) const override {
    auto inputs = CausalLM::prepare(attention_mask, past_length, new_tokens, dtype);
    inputs.bias = inputs.bias + alibi_bias(attention_mask, dims().num_heads, dtype);
    return inputs;
  }

  at::Tensor embed(const at::Tensor& input_ids, const AttentionInputs&) override {
    return transformer->word_embeddings_layernorm->forward(transformer->word_embeddings->forward(input_ids));
  }
  at::Tensor final_hidden(const at::Tensor& hidden) override { return transformer->ln_f->forward(hidden); }
  at::Tensor lm_logits(const at::Tensor& hidden) override {
    return fast_linear(hidden, transformer->word_embeddings->weight);
  }

  std::shared_ptr<BloomModel> transformer;
};

class BloomFamily : public ModelFamily {
 public:
  std::string model_type() const override { return "bloom"; }
  std::string base_model_prefix() const override { return "transformer"; }

  std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config, const ModelOptions& options) const override {
    auto model = std::make_shared<BloomForCausalLM>(BloomConfig::from_hf(hf_config), hf_config);
    model->to(options.device, options.dtype);
    return model;
  }

  std::vector<std::string> lora_target_modules() const override {
    return {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"};
  }

  // The fused qkv rows are head-major, so a contiguous row split keeps whole heads (q, k and v together).
  std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_spec(const CausalLM& model) const override {
    return tensor_parallel_by_module(model, {"query_key_value", "dense_h_to_4h"}, {"dense", "dense_4h_to_h"});
  }
};

}  // namespace

DSCHAT_PLUGIN("bloom", "0.1.0", "BLOOM causal LMs (bigscience/bloom*)") {
  registrar.add<dschat::ModelFamily>("bloom", "BLOOM (bigscience/bloom*)",
                                     [](const dschat::ConfigTable&) { return std::make_shared<BloomFamily>(); });
}
