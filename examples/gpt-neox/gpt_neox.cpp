// GPT-NeoX (EleutherAI's Pythia family, gpt-neox-20b), written out of tree against the installed dschat SDK.
//
// Names as in transformers' GPTNeoXForCausalLM: gpt_neox.embed_in.weight,
//   gpt_neox.layers.<i>.{input,post_attention}_layernorm.{weight,bias},
//   gpt_neox.layers.<i>.attention.{query_key_value,dense}.{weight,bias},
//   gpt_neox.layers.<i>.mlp.{dense_h_to_4h,dense_4h_to_h}.{weight,bias}, gpt_neox.final_layer_norm.{weight,bias},
//   embed_out.weight (absent when tie_word_embeddings).
// What sets it apart from the in-tree families:
// - parallel residual (use_parallel_residual, on in every Pythia): x + attn(ln1(x)) + mlp(ln2(x));
// - partial rotary: only the first rotary_pct of each head's features turn (0.25 in Pythia);
// - a fused QKV projection whose rows are head-major [head][q|k|v][head_dim], the layout BLOOM uses, so the
//   SDK's fused attention and its tensor-parallel row split (whole heads per rank) apply unchanged.
#include <nlohmann/json.hpp>
#include <torch/nn/modules/container/modulelist.h>

#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/embedding.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/nn/mlp.h"
#include "dschat/sdk/nn/norm.h"
#include "dschat/sdk/nn/rotary.h"
#include "dschat/sdk/nn/skinny_linear.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

// A number from rope_parameters (transformers 5) or from the top level under its 4.x name.
double rope_value(const nlohmann::json& c, const char* v5_key, const char* v4_key, double fallback) {
  if (c.contains("rope_parameters") && c["rope_parameters"].is_object() && c["rope_parameters"].contains(v5_key)) {
    const auto& value = c["rope_parameters"][v5_key];
    if (!value.is_number()) throw CheckpointError(std::string("config.json: rope_parameters.") + v5_key + " must be a number");
    return value.get<double>();
  }
  return hf_float(c, v4_key, fallback);
}

struct GptNeoXConfig {
  int64_t vocab_size, hidden_size, intermediate_size, num_layers, num_heads, head_dim;
  double layer_norm_eps;
  bool use_parallel_residual, attention_bias, tie_word_embeddings;
  Activation activation;
  RopeConfig rope;

  static GptNeoXConfig from_hf(const nlohmann::json& c) {
    GptNeoXConfig o{};
    o.vocab_size = hf_int(c, "vocab_size");
    o.hidden_size = hf_int(c, "hidden_size");
    o.intermediate_size = hf_int(c, "intermediate_size");
    o.num_layers = hf_int(c, "num_hidden_layers");
    o.num_heads = hf_int(c, "num_attention_heads");
    for (auto [key, value] : {std::pair{"vocab_size", o.vocab_size}, {"hidden_size", o.hidden_size},
                              {"intermediate_size", o.intermediate_size}, {"num_hidden_layers", o.num_layers},
                              {"num_attention_heads", o.num_heads}}) {
      if (value <= 0) throw CheckpointError(std::string("config.json: '") + key + "' must be positive");
    }
    if (o.hidden_size % o.num_heads != 0) {
      throw CheckpointError("config.json: hidden_size " + std::to_string(o.hidden_size) +
                            " is not a multiple of num_attention_heads " + std::to_string(o.num_heads));
    }
    o.head_dim = o.hidden_size / o.num_heads;
    o.layer_norm_eps = hf_float(c, "layer_norm_eps", 1e-5);
    o.use_parallel_residual = hf_bool(c, "use_parallel_residual", true);
    o.attention_bias = hf_bool(c, "attention_bias", true);
    o.tie_word_embeddings = hf_bool(c, "tie_word_embeddings", false);
    o.activation = activation_from_hf(hf_string(c, "hidden_act", "gelu"));

    // transformers truncates head_dim * rotary_pct to an integer (int()), and so must we.
    const double partial = rope_value(c, "partial_rotary_factor", "rotary_pct", 0.25);
    const auto rotary_dims = static_cast<int64_t>(static_cast<double>(o.head_dim) * partial);
    if (!(partial > 0.0 && partial <= 1.0) || rotary_dims < 2 || rotary_dims % 2 != 0) {
      throw CheckpointError("config.json: rotary_pct " + std::to_string(partial) + " of head_dim " +
                            std::to_string(o.head_dim) + " gives " + std::to_string(rotary_dims) +
                            " rotary features; it must be an even number >= 2");
    }
    try {
      o.rope = RopeConfig::from_hf(c, rotary_dims);
    } catch (const std::runtime_error& e) {
      throw CheckpointError(e.what());
    }
    o.rope.theta = rope_value(c, "rope_theta", "rotary_emb_base", 10000.0);
    return o;
  }
};

class GptNeoXLayer : public DecoderBlock {
 public:
  explicit GptNeoXLayer(const GptNeoXConfig& c) : parallel_residual_(c.use_parallel_residual) {
    input_layernorm = register_module("input_layernorm", LayerNorm(c.hidden_size, c.layer_norm_eps));
    post_attention_layernorm = register_module("post_attention_layernorm", LayerNorm(c.hidden_size, c.layer_norm_eps));
    AttentionOptions a;
    a.hidden_size = c.hidden_size;
    a.num_heads = c.num_heads;
    a.qkv_bias = a.out_bias = c.attention_bias;
    a.fused_qkv = true;
    a.qkv_name = "query_key_value";
    a.out_name = "dense";
    attention = register_module("attention", Attention(a));
    mlp = register_module("mlp", Mlp(MlpOptions{c.hidden_size, c.intermediate_size, c.activation, true,
                                                "dense_h_to_4h", "dense_4h_to_h"}));
  }

  at::Tensor forward(const at::Tensor& hidden, const AttentionInputs& inputs, LayerKv* kv) override {
    auto attended = attention->forward(input_layernorm->forward(hidden), inputs, kv);
    if (parallel_residual_) return hidden + attended + mlp->forward(post_attention_layernorm->forward(hidden));
    auto residual = hidden + attended;
    return residual + mlp->forward(post_attention_layernorm->forward(residual));
  }

  LayerNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention attention{nullptr};
  Mlp mlp{nullptr};

 private:
  bool parallel_residual_;
};

class GptNeoXModel : public torch::nn::Module {
 public:
  explicit GptNeoXModel(const GptNeoXConfig& c) {
    embed_in = register_module("embed_in", TokenEmbedding(c.vocab_size, c.hidden_size));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.num_layers; ++i) {
      auto layer = std::make_shared<GptNeoXLayer>(c);
      layers->push_back(layer);
      blocks.push_back(layer);
    }
    final_layer_norm = register_module("final_layer_norm", LayerNorm(c.hidden_size, c.layer_norm_eps));
  }

  TokenEmbedding embed_in{nullptr};
  torch::nn::ModuleList layers{nullptr};
  LayerNorm final_layer_norm{nullptr};
  std::vector<std::shared_ptr<DecoderBlock>> blocks;
};

class GptNeoXForCausalLM : public CausalLM {
 public:
  GptNeoXForCausalLM(const GptNeoXConfig& c, const nlohmann::json& hf_config)
      : CausalLM(ModelDims{c.vocab_size, c.hidden_size, c.hidden_size, c.num_layers, c.num_heads, c.num_heads,
                           c.head_dim, 0},
                 hf_config),
        rope_(c.rope) {
    gpt_neox = register_module("gpt_neox", std::make_shared<GptNeoXModel>(c));
    if (!c.tie_word_embeddings) embed_out = register_module("embed_out", LoraLinear(c.hidden_size, c.vocab_size, false));
    set_blocks(gpt_neox->blocks);
  }

  // The rotary tables ([B, T, rotary dims]) are made once per forward pass; the SDK's attention turns only those
  // first features of each head.
  AttentionInputs prepare(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                          at::ScalarType dtype) const override {
    auto inputs = CausalLM::prepare(attention_mask, past_length, new_tokens, dtype);
    std::tie(inputs.rope_cos, inputs.rope_sin) = rope_cos_sin(rope_, inputs.position_ids, dtype);
    return inputs;
  }

  at::Tensor embed(const at::Tensor& input_ids, const AttentionInputs&) override {
    return gpt_neox->embed_in->forward(input_ids);
  }
  at::Tensor final_hidden(const at::Tensor& hidden) override { return gpt_neox->final_layer_norm->forward(hidden); }
  at::Tensor lm_logits(const at::Tensor& hidden) override {
    return embed_out ? embed_out->forward(hidden) : fast_linear(hidden, gpt_neox->embed_in->weight);
  }

  std::shared_ptr<GptNeoXModel> gpt_neox;
  LoraLinear embed_out{nullptr};

 private:
  RopeConfig rope_;
};

class GptNeoXFamily : public ModelFamily {
 public:
  std::string model_type() const override { return "gpt_neox"; }
  std::string base_model_prefix() const override { return "gpt_neox"; }

  std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config, const ModelOptions& options) const override {
    auto model = std::make_shared<GptNeoXForCausalLM>(GptNeoXConfig::from_hf(hf_config), hf_config);
    model->to(options.device, options.dtype);
    return model;
  }

  std::vector<std::string> lora_target_modules() const override {
    return {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"};
  }

  // Head-major fused rows: a contiguous row split keeps whole heads; embed_out splits by vocabulary.
  std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_spec(const CausalLM& model) const override {
    return tensor_parallel_by_module(model, {"query_key_value", "dense_h_to_4h", "embed_out"},
                                     {"dense", "dense_4h_to_h"});
  }

  // Pythia checkpoints carry the causal-mask buffers (attention.bias, attention.masked_bias) of older
  // transformers, and a tied head's embed_out copy.
  bool ignorable_tensor(const std::string& name, const CausalLM& model) const override {
    auto ends_with = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(".attention.bias") || ends_with(".attention.masked_bias")) return true;
    if (name == "embed_out.weight") return !dynamic_cast<const GptNeoXForCausalLM&>(model).embed_out;
    return ModelFamily::ignorable_tensor(name, model);
  }
};

}  // namespace

DSCHAT_PLUGIN("gpt-neox", "0.1.0", "GPT-NeoX causal LMs (EleutherAI Pythia, gpt-neox-20b); an out-of-tree example") {
  registrar.add<dschat::ModelFamily>("gpt_neox", "GPT-NeoX: parallel residual, partial rotary, fused QKV",
                                     [](const dschat::ConfigTable&) { return std::make_shared<GptNeoXFamily>(); });
}
