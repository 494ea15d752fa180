// LLaMA 1/2/3 (and 3.1 rope scaling): config.json mapping, block wiring and weight names, top to bottom.
//
// Names as in transformers' LlamaForCausalLM: model.embed_tokens.weight,
//   model.layers.<i>.self_attn.{q,k,v,o}_proj.weight (+ .bias with attention_bias),
//   model.layers.<i>.mlp.{gate,up,down}_proj.weight, model.layers.<i>.{input,post_attention}_layernorm.weight,
//   model.norm.weight, lm_head.weight (absent when tie_word_embeddings).
// Grouped-query attention when num_key_value_heads < num_attention_heads; RMSNorm; SwiGLU; rotary positions.
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/modulelist.h>

#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/embedding.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/nn/mlp.h"
#include "dschat/sdk/nn/norm.h"
#include "dschat/sdk/nn/skinny_linear.h"
#include "dschat/sdk/nn/rotary.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

struct LlamaConfig {
  int64_t vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim,
      max_positions;
  double rms_norm_eps;
  bool attention_bias, mlp_bias, tie_word_embeddings;
  Activation activation;
  RopeConfig rope;

  static LlamaConfig from_hf(const nlohmann::json& c) {
    LlamaConfig o{};
    o.vocab_size = hf_int(c, "vocab_size");
    o.hidden_size = hf_int(c, "hidden_size");
    o.intermediate_size = hf_int(c, "intermediate_size");
    o.num_layers = hf_int(c, "num_hidden_layers");
    o.num_heads = hf_int(c, "num_attention_heads");
    o.num_kv_heads = hf_int(c, "num_key_value_heads", o.num_heads);
    for (auto [key, value] : {std::pair{"vocab_size", o.vocab_size}, {"hidden_size", o.hidden_size},
                              {"intermediate_size", o.intermediate_size}, {"num_hidden_layers", o.num_layers},
                              {"num_attention_heads", o.num_heads}, {"num_key_value_heads", o.num_kv_heads}}) {
      if (value <= 0) throw CheckpointError(std::string("config.json: '") + key + "' must be positive");
    }
    if (o.num_heads % o.num_kv_heads != 0) {
      throw CheckpointError("config.json: num_attention_heads " + std::to_string(o.num_heads) +
                            " is not a multiple of num_key_value_heads " + std::to_string(o.num_kv_heads));
    }
    if (!c.contains("head_dim") && o.hidden_size % o.num_heads != 0) {
      throw CheckpointError("config.json: hidden_size " + std::to_string(o.hidden_size) +
                            " is not a multiple of num_attention_heads " + std::to_string(o.num_heads));
    }
    o.head_dim = hf_int(c, "head_dim", o.hidden_size / o.num_heads);
    o.max_positions = hf_int(c, "max_position_embeddings", 2048);
    o.rms_norm_eps = hf_float(c, "rms_norm_eps", 1e-6);
    o.attention_bias = hf_bool(c, "attention_bias", false);
    o.mlp_bias = hf_bool(c, "mlp_bias", false);
    o.tie_word_embeddings = hf_bool(c, "tie_word_embeddings", false);
    o.activation = activation_from_hf(hf_string(c, "hidden_act", "silu"));
    try {
      o.rope = RopeConfig::from_hf(c, o.head_dim);
    } catch (const std::runtime_error& e) {
      throw CheckpointError(e.what());
    }
    return o;
  }
};

class LlamaDecoderLayer : public DecoderBlock {
 public:
  explicit LlamaDecoderLayer(const LlamaConfig& c) {
    AttentionOptions attention;
    attention.hidden_size = c.hidden_size;
    attention.num_heads = c.num_heads;
    attention.num_kv_heads = c.num_kv_heads;
    attention.head_dim = c.head_dim;
    attention.qkv_bias = attention.out_bias = c.attention_bias;
    attention.out_name = "o_proj";
    self_attn = register_module("self_attn", Attention(attention));
    mlp = register_module("mlp", GatedMlp(GatedMlpOptions{c.hidden_size, c.intermediate_size, c.activation, c.mlp_bias}));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  }

  at::Tensor forward(const at::Tensor& input, const AttentionInputs& inputs, LayerKv* kv) override {
    auto hidden = input + self_attn->forward(input_layernorm->forward(input), inputs, kv);
    return hidden + mlp->forward(post_attention_layernorm->forward(hidden));
  }

  Attention self_attn{nullptr};
  GatedMlp mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};

class LlamaModel : public torch::nn::Module {
 public:
  explicit LlamaModel(const LlamaConfig& c) {
    embed_tokens = register_module("embed_tokens", TokenEmbedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i) {
      auto layer = std::make_shared<LlamaDecoderLayer>(c);
      layers->push_back(layer);
      blocks.push_back(layer);
    }
    norm = register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  }

  TokenEmbedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
  std::vector<std::shared_ptr<DecoderBlock>> blocks;
};

class LlamaForCausalLM : public CausalLM {
 public:
  LlamaForCausalLM(const LlamaConfig& c, const nlohmann::json& hf_config)
      : CausalLM(ModelDims{c.vocab_size, c.hidden_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads,
                           c.head_dim, 0},
                 hf_config),
        rope_(c.rope) {
    model = register_module("model", std::make_shared<LlamaModel>(c));
    if (!c.tie_word_embeddings) lm_head = register_module("lm_head", LoraLinear(c.hidden_size, c.vocab_size, false));
    set_blocks(model->blocks);
  }

  // The rotary tables are computed once per forward pass and shared by every layer.
  AttentionInputs prepare(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                          at::ScalarType dtype) const override {
    auto inputs = CausalLM::prepare(attention_mask, past_length, new_tokens, dtype);
    std::tie(inputs.rope_cos, inputs.rope_sin) = rope_cos_sin(rope_, inputs.position_ids, dtype);
    return inputs;
  }

  at::Tensor embed(const at::Tensor& input_ids, const AttentionInputs&) override {
    return model->embed_tokens->forward(input_ids);
  }
  at::Tensor final_hidden(const at::Tensor& hidden) override { return model->norm->forward(hidden); }
  at::Tensor lm_logits(const at::Tensor& hidden) override {
    return lm_head ? lm_head->forward(hidden) : fast_linear(hidden, model->embed_tokens->weight);
  }

  std::shared_ptr<LlamaModel> model;
  LoraLinear lm_head{nullptr};

 private:
  RopeConfig rope_;
};

class LlamaFamily : public ModelFamily {
 public:
  std::string model_type() const override { return "llama"; }
  std::string base_model_prefix() const override { return "model"; }

  std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config, const ModelOptions& options) const override {
    auto model = std::make_shared<LlamaForCausalLM>(LlamaConfig::from_hf(hf_config), hf_config);
    model->to(options.device, options.dtype);
    return model;
  }

  std::vector<std::string> lora_target_modules() const override {
    return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  }

  std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_spec(const CausalLM& model) const override {
    return tensor_parallel_by_module(model, {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head"},
                                     {"o_proj", "down_proj"});
  }
};

}  // namespace

DSCHAT_PLUGIN("llama", "0.1.0", "LLaMA 1/2/3 causal LMs") {
  registrar.add<dschat::ModelFamily>("llama", "LLaMA 1/2/3, 3.1 rope scaling, grouped-query attention",
                                     [](const dschat::ConfigTable&) { return std::make_shared<LlamaFamily>(); });
}
