// OPT (facebook/opt-*): config.json mapping, block wiring and weight names, top to bottom.
//
// Modules are named as in transformers' OPTForCausalLM, so named_parameters() are the checkpoint's names:
//   model.decoder.embed_tokens.weight, model.decoder.embed_positions.weight,
//   model.decoder.layers.<i>.self_attn.{q,k,v,out}_proj.{weight,bias}, ...fc1, fc2, *_layer_norm,
//   model.decoder.final_layer_norm.*, model.decoder.project_{in,out}.weight (opt-350m).
// The LM head is tied to embed_tokens (no parameter of its own) unless tie_word_embeddings is false.
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/modulelist.h>

#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/embedding.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/nn/mlp.h"
#include "dschat/sdk/nn/norm.h"
#include "dschat/sdk/nn/skinny_linear.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

struct OptConfig {
  int64_t vocab_size, hidden_size, num_layers, num_heads, ffn_dim, max_positions, word_embed_proj_dim;
  bool do_layer_norm_before, remove_final_layer_norm, enable_bias, layer_norm_affine, tie_word_embeddings;
  Activation activation;

  static OptConfig from_hf(const nlohmann::json& c) {
    OptConfig o{};
    o.vocab_size = hf_int(c, "vocab_size");
    o.hidden_size = hf_int(c, "hidden_size");
    o.num_layers = hf_int(c, "num_hidden_layers");
    o.num_heads = hf_int(c, "num_attention_heads");
    o.ffn_dim = hf_int(c, "ffn_dim");
    o.max_positions = hf_int(c, "max_position_embeddings");
    o.word_embed_proj_dim = hf_int(c, "word_embed_proj_dim", o.hidden_size);
    o.do_layer_norm_before = hf_bool(c, "do_layer_norm_before", true);
    o.remove_final_layer_norm = hf_bool(c, "_remove_final_layer_norm", false);
    o.enable_bias = hf_bool(c, "enable_bias", true);
    o.layer_norm_affine = hf_bool(c, "layer_norm_elementwise_affine", true);
    o.tie_word_embeddings = hf_bool(c, "tie_word_embeddings", true);
    o.activation = activation_from_hf(hf_string(c, "activation_function", "relu"));
    for (auto [key, value] : {std::pair{"vocab_size", o.vocab_size}, {"hidden_size", o.hidden_size},
                              {"num_hidden_layers", o.num_layers}, {"num_attention_heads", o.num_heads},
                              {"ffn_dim", o.ffn_dim}, {"word_embed_proj_dim", o.word_embed_proj_dim}}) {
      if (value <= 0) throw CheckpointError(std::string("config.json: '") + key + "' must be positive");
    }
    if (o.hidden_size % o.num_heads != 0) {
      throw CheckpointError("config.json: hidden_size " + std::to_string(o.hidden_size) +
                            " is not a multiple of num_attention_heads " + std::to_string(o.num_heads));
    }
    return o;
  }
};

// Pre-LN (do_layer_norm_before, 125m and >= 1.3b) or post-LN (350m) block; ReLU feed-forward.
class OptDecoderLayer : public DecoderBlock {
 public:
  explicit OptDecoderLayer(const OptConfig& c) : pre_norm_(c.do_layer_norm_before), activation_(c.activation) {
    AttentionOptions attention;
    attention.hidden_size = c.hidden_size;
    attention.num_heads = c.num_heads;
    attention.qkv_bias = attention.out_bias = c.enable_bias;
    attention.out_name = "out_proj";
    self_attn = register_module("self_attn", Attention(attention));
    self_attn_layer_norm = register_module("self_attn_layer_norm", LayerNorm(c.hidden_size, 1e-5, c.layer_norm_affine));
    fc1 = register_module("fc1", LoraLinear(c.hidden_size, c.ffn_dim, c.enable_bias));
    fc2 = register_module("fc2", LoraLinear(c.ffn_dim, c.hidden_size, c.enable_bias));
    final_layer_norm = register_module("final_layer_norm", LayerNorm(c.hidden_size, 1e-5, c.layer_norm_affine));
  }

  at::Tensor forward(const at::Tensor& input, const AttentionInputs& inputs, LayerKv* kv) override {
    auto hidden = input;
    auto residual = hidden;
    if (pre_norm_) hidden = self_attn_layer_norm->forward(hidden);
    hidden = residual + self_attn->forward(hidden, inputs, kv);
    if (!pre_norm_) hidden = self_attn_layer_norm->forward(hidden);

    residual = hidden;
    if (pre_norm_) hidden = final_layer_norm->forward(hidden);
    hidden = residual + fc2->forward(activate(fc1->forward(hidden), activation_));
    if (!pre_norm_) hidden = final_layer_norm->forward(hidden);
    return hidden;
  }

  Attention self_attn{nullptr};
  LayerNorm self_attn_layer_norm{nullptr}, final_layer_norm{nullptr};
  LoraLinear fc1{nullptr}, fc2{nullptr};

 private:
  bool pre_norm_;
  Activation activation_;
};

class OptDecoder : public torch::nn::Module {
 public:
  explicit OptDecoder(const OptConfig& c) {
    embed_tokens = register_module("embed_tokens", TokenEmbedding(c.vocab_size, c.word_embed_proj_dim));
    embed_positions = register_module("embed_positions", LearnedPositionalEmbedding(c.max_positions, c.hidden_size));
    if (c.word_embed_proj_dim != c.hidden_size) {
      project_out = register_module("project_out", LoraLinear(c.hidden_size, c.word_embed_proj_dim, false));
      project_in = register_module("project_in", LoraLinear(c.word_embed_proj_dim, c.hidden_size, false));
    }
    if (c.do_layer_norm_before && !c.remove_final_layer_norm) {
      final_layer_norm = register_module("final_layer_norm", LayerNorm(c.hidden_size, 1e-5, c.layer_norm_affine));
    }
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i) {
      auto layer = std::make_shared<OptDecoderLayer>(c);
      layers->push_back(layer);
      blocks.push_back(layer);
    }
  }

  TokenEmbedding embed_tokens{nullptr};
  LearnedPositionalEmbedding embed_positions{nullptr};
  LoraLinear project_in{nullptr}, project_out{nullptr};
  LayerNorm final_layer_norm{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<std::shared_ptr<DecoderBlock>> blocks;
};

class OptModel : public torch::nn::Module {
 public:
  explicit OptModel(const OptConfig& c) { decoder = register_module("decoder", std::make_shared<OptDecoder>(c)); }
  std::shared_ptr<OptDecoder> decoder;
};

class OptForCausalLM : public CausalLM {
 public:
  OptForCausalLM(const OptConfig& c, const nlohmann::json& hf_config)
      : CausalLM(ModelDims{c.vocab_size, c.hidden_size, c.word_embed_proj_dim, c.num_layers, c.num_heads,
                           c.num_heads, c.hidden_size / c.num_heads, c.max_positions},
                 hf_config) {
    model = register_module("model", std::make_shared<OptModel>(c));
    if (!c.tie_word_embeddings) lm_head = register_module("lm_head", LoraLinear(c.word_embed_proj_dim, c.vocab_size, false));
    set_blocks(model->decoder->blocks);
  }

  at::Tensor embed(const at::Tensor& input_ids, const AttentionInputs& inputs) override {
    auto& d = *model->decoder;
    auto tokens = d.embed_tokens->forward(input_ids);
    if (d.project_in) tokens = d.project_in->forward(tokens);
    return tokens + d.embed_positions->forward(inputs.position_ids);
  }

  at::Tensor final_hidden(const at::Tensor& hidden) override {
    auto& d = *model->decoder;
    auto out = hidden;
    if (d.final_layer_norm) out = d.final_layer_norm->forward(out);
    if (d.project_out) out = d.project_out->forward(out);
    return out;
  }

  at::Tensor lm_logits(const at::Tensor& hidden) override {
    return lm_head ? lm_head->forward(hidden) : fast_linear(hidden, model->decoder->embed_tokens->weight);
  }

  std::shared_ptr<OptModel> model;
  LoraLinear lm_head{nullptr};
};

class OptFamily : public ModelFamily {
 public:
  std::string model_type() const override { return "opt"; }
  std::string base_model_prefix() const override { return "model"; }

  std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config, const ModelOptions& options) const override {
    auto model = std::make_shared<OptForCausalLM>(OptConfig::from_hf(hf_config), hf_config);
    model->to(options.device, options.dtype);
    return model;
  }

  std::vector<std::string> lora_target_modules() const override {
    return {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};
  }

  std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_spec(const CausalLM& model) const override {
    return tensor_parallel_by_module(model, {"q_proj", "k_proj", "v_proj", "fc1", "lm_head"}, {"out_proj", "fc2"});
  }
};

}  // namespace

DSCHAT_PLUGIN("opt", "0.1.0", "OPT causal LMs (facebook/opt-*)") {
  registrar.add<dschat::ModelFamily>("opt", "OPT (facebook/opt-*)", [](const dschat::ConfigTable&) {
    return std::make_shared<OptFamily>();
  });
}
