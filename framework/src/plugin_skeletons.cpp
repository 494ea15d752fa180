// The texts `dschat plugin new` writes: CMakeLists.txt and each kind's NAME.cpp (placeholders: plugin_skeletons.h).
// Each skeleton builds against the installed SDK, loads, and does something real and small; tests/sdk_install
// builds every kind out of tree.
#include "plugin_skeletons.h"

namespace dschat {

const char* const kPluginCMakeLists = R"SKELETON(# The dschat {{kind}} plugin "{{name}}", built against the installed SDK:
#   cmake -S . -B build -G Ninja -DCMAKE_PREFIX_PATH=<dschat's install prefix>
#   cmake --build build && ctest --test-dir build
#   dschat plugins --path build/libdschat-{{name}}.so     (or DSCHAT_PLUGIN_PATH=build, or [plugins].paths)
cmake_minimum_required(VERSION 3.25)
project({{ident}}_plugin LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 20)
if(NOT CMAKE_BUILD_TYPE)
  set(CMAKE_BUILD_TYPE Release)  # LibTorch does the heavy work, but the plugin's own loops want -O2 too
endif()
find_package(dschat REQUIRED)
dschat_add_plugin({{name}} SOURCES {{name}}.cpp)

enable_testing()
# The installed host loads the library and lists it as ok: ABI, build fingerprint (toolchain and SDK headers)
# and the kind's interface version all agree.
add_test(NAME {{ident}}_loads COMMAND ${DSCHAT_EXECUTABLE} plugins --path $<TARGET_FILE:dschat_plugin_{{name}}>)
set_tests_properties({{ident}}_loads PROPERTIES PASS_REGULAR_EXPRESSION "{{kind}} +{{registered}} +0\\.1\\.0 +ok")
{{harness}})SKELETON";

// The scaffold's second test, by kind: the SDK's harness (`dschat plugin test`) runs the plugin in a short stage.
const char* const kHarnessTest = R"SKELETON(# The SDK's harness runs it for real (`dschat plugin test --help`): a few steps of a stage on the SDK's tiny model
# and data that use this plugin, every metric checked finite.
dschat_add_plugin_test({{ident}}_runs {{name}})
)SKELETON";

const char* const kModelHarnessTest = R"SKELETON(# The SDK's harness (`dschat plugin test --help`) on a tiny model of this family: tiny/config.json with the SDK's
# tokenizer, random weights. It checks the KV cache against the full forward pass, the hidden states, the HF export
# read back, the tensor-parallel and LoRA specs, then trains it for a few sft steps. Once transformers knows the
# family, ${DSCHAT_TESTING_DIR}/make_parity_fixture.py tiny/config.json DIR writes a folder with transformers'
# logits and greedy tokens, and `MODEL DIR` compares against them too.
file(COPY tiny/config.json ${DSCHAT_TESTING_DIR}/model/tokenizer.json ${DSCHAT_TESTING_DIR}/model/tokenizer_config.json
     DESTINATION ${CMAKE_CURRENT_BINARY_DIR}/tiny)
dschat_add_plugin_test({{ident}}_runs {{name}} MODEL ${CMAKE_CURRENT_BINARY_DIR}/tiny)
)SKELETON";

const char* const kTinyModelConfig = R"SKELETON({
  "model_type": "{{registered}}",
  "vocab_size": 640,
  "hidden_size": 64,
  "intermediate_size": 128,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "max_position_embeddings": 256,
  "tie_word_embeddings": false,
  "pad_token_id": 0,
  "bos_token_id": 0,
  "eos_token_id": 0
}
)SKELETON";

const char* const kHook = R"SKELETON(// Hook "{{name}}": called by the training stages (sft, reward, ppo, ...) around their optimizer steps; see
// dschat/sdk/hook.h for when each method runs. Use it in a stage: hooks = [{ plugin = "{{name}}", every = 100 }].
#include <iostream>

#include "dschat/sdk/config.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

namespace {

class {{class}} : public dschat::Hook {
 public:
  // Options are read here, at validate time: a wrong type or value is reported with its file:line.
  explicit {{class}}(const dschat::ConfigTable& options) : every_(options.get_int("every", 100, 1)) {}

  void after_optimizer_step(torch::nn::Module& /*model*/, const dschat::HookStepInfo& info) override {
    if (info.step % every_ == 0) std::cout << "{{name}}: optimizer step " << info.step << "\n";
  }

 private:
  int64_t every_;
};

}  // namespace

DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a hook") {
  registrar.add<dschat::Hook>("{{name}}", "prints every `every`-th optimizer step",
                              [](const dschat::ConfigTable& o) { return std::make_shared<{{class}}>(o); });
}
)SKELETON";

const char* const kAlgorithm = R"SKELETON(// Algorithm "{{name}}": a training stage. As written it fine-tunes the stage's `model` with the causal-LM loss on
// the SFT share of [data] (what DeepSpeed-Chat's step 1 does) through the SDK's parts: the stage's strategy makes
// the engine, run_train_loop does epochs, accumulation, evaluation, checkpoints and resume, and the final model is
// written as an HF folder. Change the loss and the data it reads; see dschat/sdk/algorithm.h for the lifecycle.
// Use it in a pipeline: [[stage]] algorithm = "{{name}}", model = "...".
#include <ATen/ops/cross_entropy_loss.h>
#include <c10/core/GradMode.h>

#include <stdexcept>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

namespace {

using namespace dschat;

class {{class}} : public Algorithm {
 public:
  // The shared training keys (learning_rate, epochs, per_device_train_batch_size, ...), checked at validate time.
  explicit {{class}}(const ConfigTable& options) : options_(read_train_options(options, {1e-5, 0.0})) {}

  DataNeeds data_needs() const override { return {Phase::sft, false}; }
  std::map<std::string, std::string> model_roles() const override {
    return {{"model", options_.model_role_reference}};
  }

  void run(StageContext& context) override {
    auto handle = context.model("model");
    auto tokenizer = context.tokenizer("model");
    auto lm = context.load_model("model");
    const auto& train = context.data().tokenized(Phase::sft, false, *tokenizer);
    const auto& eval = context.data().tokenized(Phase::sft, true, *tokenizer);
    const int64_t max_seq_len = context.data().limits().max_seq_len;
    auto pad = tokenizer->eos_id() ? tokenizer->eos_id() : tokenizer->pad_id();
    if (!pad) throw std::invalid_argument("the tokenizer has neither a pad nor an eos token");

    OptimizerOptions optimizer = options_.optimizer;
    optimizer.total_steps = total_optimizer_steps(options_, static_cast<int64_t>(train.size()));
    auto engine = context.strategy().make_engine(lm, lm, optimizer);

    auto loss_on = [&](const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices) {
      std::vector<const TokenizedExample*> rows;
      for (auto i : indices) rows.push_back(&set[static_cast<size_t>(i)]);
      SftBatch batch = collate_sft(rows, max_seq_len, *pad);
      trim_right_padding(batch.attention_mask, {&batch.input_ids, &batch.labels});
      auto logits = engine->forward(batch.input_ids, batch.attention_mask).logits;
      const int64_t V = logits.size(-1);
      auto loss = at::cross_entropy_loss(logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V}),
                                         batch.labels.slice(1, 1).to(logits.device()).reshape({-1}), {},
                                         at::Reduction::Mean, -100);
      return std::make_pair(loss, batch.attention_mask.sum().item<int64_t>());
    };
    TrainLoopCallbacks callbacks;
    callbacks.hook_model = {handle.family, tokenizer};  // the stage's hooks see the model through the loop
    callbacks.micro_batch = [&](const std::vector<int64_t>& indices) -> std::pair<double, int64_t> {
      auto [loss, tokens] = loss_on(train, indices);
      engine->backward(loss);
      return {loss.item<double>(), tokens};
    };
    callbacks.evaluate = [&](int64_t step) {
      if (eval.empty()) return;
      engine->train(false);
      at::NoGradGuard no_grad;
      std::vector<int64_t> indices;
      for (int64_t i = 0; i < std::min<int64_t>(options_.per_device_eval_batch_size, eval.size()); ++i)
        indices.push_back(i);
      context.metrics().scalar("eval/loss", loss_on(eval, indices).first.item<double>(), step);
      engine->train(true);
    };
    run_train_loop(context, *engine, options_, static_cast<int64_t>(train.size()), callbacks);

    auto whole = engine->gather_parameters();  // ZeRO-3: every weight back on every rank for the export
    if (world().is_main()) {
      handle.family->export_hf(*lm, context.stage_dir() / "final");
      tokenizer->save(context.stage_dir() / "final");
    }
  }

 private:
  TrainOptions options_;
};

}  // namespace

DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a training stage") {
  registrar.add<dschat::Algorithm>("{{name}}", "causal-LM fine-tuning (a starting point)",
                                   [](const dschat::ConfigTable& o) { return std::make_shared<{{class}}>(o); });
}
)SKELETON";

const char* const kModel = R"SKELETON(// Model family "{{name}}": the causal LM of HF config.json files whose model_type is "{{registered}}". As
// written, a small pre-LN transformer from SDK layers: token embedding; per block RMSNorm -> rotary attention
// (grouped-query when num_key_value_heads < num_attention_heads) and RMSNorm -> SwiGLU MLP, each added to the
// residual stream; a final RMSNorm; an LM head tied to the embedding unless tie_word_embeddings is false (nn/norm.h
// and nn/mlp.h have LayerNorm and Mlp for GPT-style blocks). Module names *are* the checkpoint's tensor names
// (model.layers.0.self_attn.q_proj.weight, ...), so loading, export_hf, LoRA and tensor parallelism need no
// renaming: for a real checkpoint, rename the register_module calls (and the attention's q/k/v/out names) to those
// in its model.safetensors.index.json. Use it: [models.x] path = a folder with a config.json of these keys and a
// tokenizer.json, init = "random" until there are weights. dschat/sdk/model.h: what strategies and generators call.
#include <optional>
#include <string>
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

// config.json, read before any tensor is allocated; hf_int / hf_float / hf_bool and the checks here name the key.
struct Config {
  int64_t vocab_size, hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim;
  double rms_norm_eps;
  bool tie_word_embeddings;
  explicit Config(const nlohmann::json& c) {
    vocab_size = positive(c, "vocab_size");
    hidden_size = positive(c, "hidden_size");
    intermediate_size = positive(c, "intermediate_size");
    num_layers = positive(c, "num_hidden_layers");
    num_heads = positive(c, "num_attention_heads");
    num_kv_heads = positive(c, "num_key_value_heads", num_heads);  // absent: multi-head attention
    if (hidden_size % num_heads != 0 || num_heads % num_kv_heads != 0)
      throw CheckpointError("config.json: 'num_attention_heads' must divide 'hidden_size' and be a multiple of "
                            "'num_key_value_heads'");
    head_dim = hidden_size / num_heads;
    rms_norm_eps = hf_float(c, "rms_norm_eps", 1e-6);
    tie_word_embeddings = hf_bool(c, "tie_word_embeddings", true);
  }
  static int64_t positive(const nlohmann::json& c, const char* key, std::optional<int64_t> fallback = {}) {
    const int64_t value = fallback ? hf_int(c, key, *fallback) : hf_int(c, key);
    if (value <= 0) throw CheckpointError(std::string("config.json: '") + key + "' must be positive");
    return value;
  }
};

class Block : public DecoderBlock {
 public:
  explicit Block(const Config& c) {
    // q_name, k_name, v_name, out_name: the projections' checkpoint names (q_proj, k_proj, v_proj by default).
    AttentionOptions attention{.hidden_size = c.hidden_size, .num_heads = c.num_heads,
                               .num_kv_heads = c.num_kv_heads, .qkv_bias = false, .out_bias = false,
                               .out_name = "o_proj"};
    self_attn = register_module("self_attn", Attention(attention));
    mlp = register_module("mlp", GatedMlp(GatedMlpOptions{c.hidden_size, c.intermediate_size}));
    input_layernorm = register_module("input_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    post_attention_layernorm =
        register_module("post_attention_layernorm", RMSNorm(c.hidden_size, c.rms_norm_eps));
  }

  // Pre-LN: each sublayer reads a normalised copy of the residual stream and adds its output to it. `inputs`
  // (positions, mask, rotary tables) is shared by every block; `kv` is this block's KV cache (null in training).
  at::Tensor forward(const at::Tensor& x, const AttentionInputs& inputs, LayerKv* kv) override {
    auto h = x + self_attn->forward(input_layernorm->forward(x), inputs, kv);
    return h + mlp->forward(post_attention_layernorm->forward(h));
  }
  Attention self_attn{nullptr};
  GatedMlp mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};

class {{class}}ForCausalLM : public CausalLM {
 public:
  {{class}}ForCausalLM(const Config& c, const nlohmann::json& hf_config)
      : CausalLM(ModelDims{c.vocab_size, c.hidden_size, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads,
                           c.head_dim, /*max_positions: rotary has no hard limit*/ 0},
                 hf_config),
        rope_(RopeConfig::from_hf(hf_config, c.head_dim)) {  // rope_theta, rope_scaling, ...
    auto body = register_module("model", std::make_shared<torch::nn::Module>());  // the "model." prefix
    embed_tokens = body->register_module("embed_tokens", TokenEmbedding(c.vocab_size, c.hidden_size));
    auto layers = body->register_module("layers", torch::nn::ModuleList());  // model.layers.<i>.
    std::vector<std::shared_ptr<DecoderBlock>> blocks;
    for (int64_t i = 0; i < c.num_layers; ++i) layers->push_back(blocks.emplace_back(std::make_shared<Block>(c)));
    norm = body->register_module("norm", RMSNorm(c.hidden_size, c.rms_norm_eps));
    if (!c.tie_word_embeddings)
      lm_head = register_module("lm_head", LoraLinear(c.hidden_size, c.vocab_size, /*bias=*/false));
    set_blocks(std::move(blocks));  // what strategies wrap and generators run one by one
  }

  // Rotary tables for the positions the base prepare() derived from the left-padded mask; once per forward pass.
  AttentionInputs prepare(const at::Tensor& attention_mask, int64_t past_length, int64_t new_tokens,
                          at::ScalarType dtype) const override {
    auto inputs = CausalLM::prepare(attention_mask, past_length, new_tokens, dtype);
    std::tie(inputs.rope_cos, inputs.rope_sin) = rope_cos_sin(rope_, inputs.position_ids, dtype);
    return inputs;
  }
  at::Tensor embed(const at::Tensor& ids, const AttentionInputs&) override { return embed_tokens->forward(ids); }
  at::Tensor final_hidden(const at::Tensor& hidden) override { return norm->forward(hidden); }
  at::Tensor lm_logits(const at::Tensor& hidden) override {
    return lm_head ? lm_head->forward(hidden) : fast_linear(hidden, embed_tokens->weight);  // tied: no own weight
  }
  TokenEmbedding embed_tokens{nullptr};
  RMSNorm norm{nullptr};
  LoraLinear lm_head{nullptr};
  RopeConfig rope_;
};

class {{class}}Family : public ModelFamily {
 public:
  std::string model_type() const override { return "{{registered}}"; }
  std::string base_model_prefix() const override { return "model"; }  // bare base-model checkpoints omit it
  // Random weights (the SDK layers' own init); from_pretrained builds with that skipped and loads the checkpoint.
  std::shared_ptr<CausalLM> build(const nlohmann::json& hf_config, const ModelOptions& options) const override {
    auto model = std::make_shared<{{class}}ForCausalLM>(Config(hf_config), hf_config);
    model->to(options.device, options.dtype);
    return model;
  }
  // LoRA (lora_dim > 0 in a stage) may go on these LoraLinears, by their own name.
  std::vector<std::string> lora_target_modules() const override {
    return {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  }
  // Megatron splits for tensor parallelism (PPO's generation_tensor_parallel): column-parallel in, row-parallel
  // out, everything else replicated.
  std::vector<std::pair<std::string, TensorSplit>> tensor_parallel_spec(const CausalLM& model) const override {
    return tensor_parallel_by_module(model, {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "lm_head"},
                                     {"o_proj", "down_proj"});
  }
};

}  // namespace

// A model family registers under the model_type it handles: that is how config.json finds it.
DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a model family") {
  registrar.add<dschat::ModelFamily>(
      "{{registered}}", "pre-LN rotary transformer (a starting point)",
      [](const dschat::ConfigTable&) { return std::make_shared<{{class}}Family>(); });
}
)SKELETON";

const char* const kStrategy = R"SKELETON(// Strategy "{{name}}": how a stage's trainable models are placed and stepped. As written it is a working
// single-process strategy, the same as the in-tree `single`: the model on one device (CPU or one GPU) and the
// SDK's local engine (dschat/sdk/optim.h), which brings DeepSpeed-Chat's AdamW parameter groups, the warmup
// schedule, gradient clipping, bf16 / fp16 master weights, activation checkpointing and checkpoints. See
// dschat/sdk/strategy.h for what an algorithm asks of the engine.
// Use it: [strategy] plugin = "{{name}}" (or a stage's strategy = { plugin = "{{name}}" }), device = "auto".
#include <stdexcept>
#include <string>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"

namespace {

using namespace dschat;

class {{class}} : public Strategy {
 public:
  // Options are read here, at validate time: a bad `device` ("auto", "cpu", "cuda", "cuda:N") is reported with
  // its file:line before any work. Read a custom strategy's own options here too (unread keys are errors).
  explicit {{class}}(const ConfigTable& options) : device_(read_device_option(options)) {}

  std::string describe() const override { return "{{name}}: single process, device " + device_; }

  // Called by the algorithm once per trained model (PPO: actor and critic), on every rank.
  std::unique_ptr<Engine> make_engine(std::shared_ptr<torch::nn::Module> module, std::shared_ptr<CausalLM> lm,
                                      const OptimizerOptions& options) override {
    // One process: under torchrun every rank would train its own copy and write the same folders.
    if (world().size() > 1)
      throw std::invalid_argument("strategy \"{{name}}\" trains in one process, but the launcher started " +
                                  std::to_string(world().size()) + " ranks");
    const at::Device device = place_on(device_);  // "auto": the pipeline's device; "cuda": this rank's GPU
    // Where a custom strategy differs:
    //  - other optimizer behaviour: copy `options` and change fields (gradient_checkpointing, max_grad_norm, ...);
    //  - several ranks: make_partitioned_engine (dschat/sdk/partitioned_engine.h; DDP, ZeRO 1-3, offload) is
    //    what the in-tree ddp and zero strategies are presets over;
    //  - something else around training: wrap the returned Engine (forwarding every call to it), or write an
    //    Engine from scratch that runs lm->embed, lm->block_ptr(i)->forward, final_hidden and lm_logits itself.
    return make_local_engine(std::move(module), std::move(lm), options, device,
                             "{{name}}: single process, " + device.str());
  }

 private:
  std::string device_;  // resolved for this rank in make_engine, when the launcher's ranks are known
};

}  // namespace

DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a strategy") {
  registrar.add<dschat::Strategy>("{{name}}", "single process on one device (a starting point)",
                                  [](const dschat::ConfigTable& o) { return std::make_shared<{{class}}>(o); });
}
)SKELETON";

const char* const kGeneration = R"SKELETON(// Generation "{{name}}": decodes left-padded prompts with the model's KV cache. One prefill over the prompt,
// then one token per step for every row; a row that emitted eos gets pad_token_id (masked out) until all rows
// are done or max_new_tokens is reached. The token choice (greedy or temperature / top-k / top-p sampling,
// min_new_tokens' eos suppression) is the SDK's pick_next, which draws one uniform per row per step, so the
// samples match every other generator's for the same seed. See dschat/sdk/generation.h for the result's layout.
// Use it: a stage's generation = { plugin = "{{name}}", max_new_tokens = 64 }, or
// dschat generate --generation {{name}} --model DIR --prompt TEXT.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/where.h>

#include <vector>

#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"

namespace {

using namespace dschat;

class {{class}} : public Generator {
 public:
  // max_new_tokens, min_new_tokens, do_sample, temperature, top_k, top_p (ConfigErrors with file:line), and the
  // seed of the stream used by calls that bring no seed of their own.
  explicit {{class}}(const ConfigTable& options)
      : defaults_(sampling_options_from_config(options)),
        stream_(generation::make_cpu_generator(static_cast<uint64_t>(options.get_int("seed", 1234, 0)))) {}

  const SamplingOptions& defaults() const override { return defaults_; }

  GenerationResult generate(CausalLM& model, const at::Tensor& prompt_ids, const at::Tensor& prompt_mask,
                            const SamplingOptions& options) override {
    options.validate();
    generation::check_prompts(prompt_ids, prompt_mask);
    at::NoGradGuard no_grad;
    const auto device = model.device();
    const int64_t batch = prompt_ids.size(0), prompt_len = prompt_ids.size(1);
    auto rng = generation::generator_for(options, stream_);

    auto ids = prompt_ids.to(device, at::kLong);
    auto mask = prompt_mask.to(device, at::kLong);  // grows by one column per step: 1 while the row runs
    auto cache = model.allocate_cache(batch, prompt_len + options.max_new_tokens);
    auto running = at::ones({batch}, mask.options());
    auto input = ids;  // the whole prompt first (prefill), then the last chosen token
    std::vector<at::Tensor> tokens, logprobs;
    for (int64_t t = 0; t < options.max_new_tokens; ++t) {
      // Appends the input's keys/values to the cache; only the last position's logits are needed.
      auto hidden = model.forward(input, mask, &cache, /*return_hidden=*/true, /*return_logits=*/false).hidden;
      auto logits = model.lm_logits(hidden.narrow(1, hidden.size(1) - 1, 1)).squeeze(1);  // [B, V], raw
      auto uniforms = generation::draw_uniforms(batch, options, rng);  // undefined when greedy
      auto pick = generation::pick_next(logits, t, options, uniforms.defined() ? uniforms.to(device) : uniforms);
      auto next = at::where(running.ne(0), pick.tokens, at::full_like(pick.tokens, options.pad_token_id));
      tokens.push_back(next);
      logprobs.push_back(pick.logprobs * running.to(at::kFloat));  // 0 past a row's end, as the result demands
      mask = at::cat({mask, running.unsqueeze(1)}, 1);               // the eos itself still counts
      if (options.on_step) {  // streaming and stop strings: told the running rows' tokens, may end every row
        auto rows = at::nonzero(running).squeeze(1);
        if (!options.on_step(t, pick.tokens.index_select(0, rows), rows)) break;
      }
      running = running * generation::is_eos(pick.tokens, options).logical_not().to(at::kLong);
      if (running.eq(0).all().item<bool>()) break;
      input = next.unsqueeze(1);
    }

    GenerationResult out;
    out.prompt_length = prompt_len;
    out.sequences = at::cat({ids, at::stack(tokens, 1)}, 1);
    out.attention_mask = mask;
    out.answer_mask = mask.narrow(1, prompt_len, mask.size(1) - prompt_len).contiguous();
    out.logprobs = at::stack(logprobs, 1);
    return out;
  }

 private:
  SamplingOptions defaults_;
  at::Generator stream_;  // advances from call to call
};

}  // namespace

DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a generation plugin") {
  registrar.add<dschat::Generator>("{{name}}", "KV-cache decoding, every row to the end (a starting point)",
                                   [](const dschat::ConfigTable& o) { return std::make_shared<{{class}}>(o); });
}
)SKELETON";
const std::map<std::string, const char*>& plugin_skeletons() {
  static const std::map<std::string, const char*> by_kind{{"model", kModel},         {"strategy", kStrategy},
                                                          {"generation", kGeneration}, {"algorithm", kAlgorithm},
                                                          {"hook", kHook}};
  return by_kind;
}

}  // namespace dschat
