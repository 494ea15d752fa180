// The `ema` hook, loaded through the host registry: after N optimizer steps the average equals the closed form
// beta^N theta_0 + sum_i (1 - beta) beta^(N - i) theta_i, and on_train_end writes it as an HF folder that
// loads back.
#include <cmath>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "plugin_helpers.h"
#include "dschat/framework/pipeline.h"
#include "dschat/framework/registry.h"
#include "dschat/framework/runner.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

using dschat::testing::registry;

using dschat::testing::table;

struct Small : torch::nn::Module {
  at::Tensor w = register_parameter("w", at::tensor({1.0f, -2.0f, 0.5f}));
  at::Tensor b = register_parameter("b", at::tensor({3.0f}));
};

// theta_i: what the "optimizer" sets at step i (any sequence will do; this one is not geometric).
at::Tensor theta(const at::Tensor& start, int64_t i) { return start + std::sin(0.7 * i) + 0.1 * i * i; }

// Closed form of the recursion started at step `first` (the EMA follows theta exactly before it):
// ema_N = beta^(N - f + 1) theta_(f-1) + sum_{i=f..N} (1 - beta) beta^(N - i) theta_i.
at::Tensor closed_form(const at::Tensor& start, double beta, int64_t first, int64_t n) {
  auto out = std::pow(beta, n - first + 1) * theta(start, first - 1);
  for (int64_t i = first; i <= n; ++i) out = out + (1 - beta) * std::pow(beta, n - i) * theta(start, i);
  return out;
}

void run_steps(Hook& hook, Small& model, int64_t n, std::map<std::string, at::Tensor>& start) {
  hook.on_train_begin(model);
  for (int64_t i = 1; i <= n; ++i) {
    {
      at::NoGradGuard no_grad;
      model.w.copy_(theta(start["w"], i));
      model.b.copy_(theta(start["b"], i));
    }
    hook.after_optimizer_step(model, {.step = i});
  }
}

TEST(Ema, MatchesClosedFormAndWritesItsWeights) {
  auto hook = registry().create<Hook>("ema", table("beta = 0.9"));
  Small model;
  std::map<std::string, at::Tensor> start{{"w", model.w.detach().clone()}, {"b", model.b.detach().clone()}};
  constexpr int64_t kSteps = 7;
  run_steps(*hook, model, kSteps, start);

  const fs::path stage = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "ema" / "plain";
  fs::remove_all(stage);
  hook->on_train_end(model, stage);  // not a CausalLM: a plain safetensors file of the averages
  auto file = safetensors::File::open(stage / "ema" / "ema.safetensors");
  std::map<std::string, at::Tensor> saved;
  for (const auto& info : file->tensors()) saved[info.name] = file->tensor(info).clone();
  for (const char* name : {"w", "b"}) {
    auto want = closed_form(start[name], 0.9, 1, kSteps);
    EXPECT_TRUE(at::allclose(saved.at(name), want, 1e-6, 1e-5)) << name << saved.at(name) << want;
    // and the trained weights are untouched
    EXPECT_TRUE(at::equal(name == std::string("w") ? model.w : model.b, theta(start[name], kSteps)));
  }
}

TEST(Ema, StartStepAndDefaults) {
  auto hook = registry().create<Hook>("ema", table("start_step = 4"));  // beta defaults to 0.992
  Small model;
  std::map<std::string, at::Tensor> start{{"w", model.w.detach().clone()}, {"b", model.b.detach().clone()}};
  run_steps(*hook, model, 9, start);
  const fs::path stage = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "ema" / "start";
  fs::remove_all(stage);
  hook->on_train_end(model, stage);
  auto file = safetensors::File::open(stage / "ema" / "ema.safetensors");
  for (const auto& info : file->tensors()) {
    auto want = closed_form(start[info.name], 0.992, 4, 9);
    EXPECT_TRUE(at::allclose(file->tensor(info), want, 1e-6, 1e-5)) << info.name;
  }
}

TEST(Ema, ExportsAnHfFolderThroughTheFamily) {
  auto family = registry().create<ModelFamily>("opt", table(""));
  nlohmann::json config = {{"model_type", "opt"}, {"vocab_size", 40}, {"hidden_size", 16},
                           {"num_hidden_layers", 1}, {"num_attention_heads", 2}, {"ffn_dim", 32},
                           {"max_position_embeddings", 32}, {"pad_token_id", 1}, {"bos_token_id", 2},
                           {"eos_token_id", 2}};
  auto model = family->build(config, {});
  auto hook = registry().create<Hook>("ema", table("beta = 0.5"));
  hook->set_model_info({.family = family, .tokenizer = nullptr});
  hook->on_train_begin(*model);
  std::map<std::string, at::Tensor> initial, expected;
  for (auto& item : model->named_parameters()) initial[item.key()] = item.value().detach().clone();
  {  // one step: theta_1 = theta_0 + 1 -> ema = 0.5 theta_0 + 0.5 (theta_0 + 1) = theta_0 + 0.5
    at::NoGradGuard no_grad;
    for (auto& item : model->named_parameters()) item.value().add_(1.0);
  }
  hook->after_optimizer_step(*model, {.step = 1});
  const fs::path stage = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "ema" / "hf";
  fs::remove_all(stage);
  hook->on_train_end(*model, stage);
  auto back = family->from_pretrained(stage / "ema", {});
  for (auto& item : back->named_parameters()) {
    EXPECT_TRUE(at::allclose(item.value(), initial.at(item.key()) + 0.5, 1e-6, 1e-6)) << item.key();
  }
  for (auto& item : model->named_parameters()) {  // the trained weights were put back
    EXPECT_TRUE(at::equal(item.value(), initial.at(item.key()) + 1.0)) << item.key();
  }
}

TEST(Ema, BadOptionsAreConfigErrors) {
  for (const char* text : {"beta = 1.5", "beta = -0.1", "start_step = -1", "dtype = \"int8\"", "device = \"gpu\""}) {
    EXPECT_THROW(registry().create<Hook>("ema", table(text)), ConfigError) << text;
  }
}

}  // namespace

// The supervised stages run their hooks through the SDK's training loop: an sft stage with the ema hook writes
// the EMA folder, keeps the hook's state in each checkpoint, and a resumed stage reads it back.
TEST(Ema, AnSftStageRunsItsHooksAndCheckpointsTheirState) {
  const fs::path quickstart = fs::path(DSCHAT_SOURCE_DIR) / "configs" / "quickstart";
  const fs::path root = fs::path(DSCHAT_BINARY_DIR) / "test-data" / "sft-hooks";
  fs::remove_all(root);
  fs::create_directories(root);
  std::ostringstream toml;
  toml << "[pipeline]\nname = \"sft-hooks\"\noutput_dir = \"" << (root / "run").string() << "\"\nseed = 3\n"
       << "[models.actor]\npath = \"" << (quickstart / "model").string() << "\"\ninit = \"random\"\n"
       << "[data]\ndatasets = [\"" << (quickstart / "data" / "requests.jsonl").string() << "\"]\n"
       << "split = [1, 0, 0]\neval_fraction = 0.05\nmax_seq_len = 96\nmax_prompt_seq_len = 32\n"
       << "[[stage]]\nname = \"sft\"\nalgorithm = \"sft\"\nmodel = \"actor\"\nper_device_train_batch_size = 8\n"
       << "max_steps = 6\ncheckpoint_interval = 3\neval_iters = 1\nlearning_rate = 1e-3\n"
       << "hooks = [{ plugin = \"ema\", beta = 0.5 }]\n";
  const fs::path file = root / "pipeline.toml";
  std::ofstream(file) << toml.str();
  ASSERT_TRUE(run_pipeline(load_pipeline(file, {}, registry()), registry()));
  const fs::path stage = root / "run" / "sft";
  EXPECT_TRUE(fs::exists(stage / "ema" / "config.json"));
  ASSERT_TRUE(fs::exists(stage / "checkpoints" / "step-6" / "hook-0"));
  EXPECT_FALSE(fs::is_empty(stage / "checkpoints" / "step-6" / "hook-0"));

  // The EMA after 6 steps in one go equals the EMA of a run resumed from step 3's checkpoint.
  auto ema_weights = [&] {
    auto f = safetensors::File::open(stage / "ema" / "model.safetensors");
    return f->tensor(f->tensors().front()).clone();
  };
  const auto whole = ema_weights();
  fs::remove_all(stage / "final");
  fs::remove_all(stage / "ema");
  fs::remove_all(stage / "checkpoints" / "step-6");
  ASSERT_TRUE(run_pipeline(load_pipeline(file, {}, registry()), registry()));
  EXPECT_TRUE(ema_weights().allclose(whole, 1e-5, 1e-6));
}
