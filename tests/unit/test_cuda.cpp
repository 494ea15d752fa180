// The model plugins on a CUDA device against transformers' CPU reference logits and greedy tokens (fixtures of
// tools/make_model_fixtures.py, made by test_models). Skipped, saying why, in a CPU build or without a GPU:
// run it on the GPU machine from a CUDA build (-DDSCHAT_CUDA=ON).
#include <cstdlib>

#include <ATen/Context.h>
#include <gtest/gtest.h>

#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/hybrid_engine.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

fs::path fixtures_dir() {
  if (const char* env = std::getenv("DSCHAT_MODEL_FIXTURES")) return env;
  return fs::path(DSCHAT_BINARY_DIR) / "test-data" / "models";
}

fs::path plugin_dir() {
  if (const char* env = std::getenv("DSCHAT_TEST_MODEL_PLUGINS")) return env;
  return fs::path(DSCHAT_BINARY_DIR) / "lib" / "dschat" / "plugins";
}

PluginRegistry& registry() {
  static PluginRegistry instance;
  return instance;
}
const ConfigTable& no_options() {
  static auto document = ConfigDocument::parse_string("", "test", ".");
  static ConfigTable root = document->root();
  return root;
}
std::shared_ptr<ModelFamily> family(const std::string& name) {
  return registry().create_from_library<ModelFamily>(plugin_dir() / ("libdschat-" + name + ".so"), no_options());
}
std::shared_ptr<Generator> generator(const std::string& name) {
  return registry().create_from_library<Generator>(plugin_dir() / ("libdschat-" + name + ".so"), no_options());
}
std::string plugin_of(const std::string& variant) {
  return variant.rfind("opt", 0) == 0 ? "opt" : variant.rfind("bloom", 0) == 0 ? "bloom" : "llama";
}

class CudaParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!built_with_cuda()) GTEST_SKIP() << "CPU build: configure with -DDSCHAT_CUDA=ON and run on a GPU";
    std::string problem;
    if (list_accelerators(&problem).empty()) GTEST_SKIP() << "no CUDA device: " << problem;
    if (!fs::exists(fixtures_dir() / GetParam() / "reference.safetensors"))
      GTEST_SKIP() << "no fixtures in " << fixtures_dir() << " (run test_models first, or set DSCHAT_MODEL_FIXTURES)";
    // Compare fp32 with fp32: no TF32 shortcuts in matmuls.
    at::globalContext().setAllowTF32CuBLAS(false);
  }
};

TEST_P(CudaParity, LogitsAndGreedyTokensMatchTransformers) {
  const std::string variant = GetParam();
  const std::string plugin = plugin_of(variant);
  auto reference = safetensors::File::open(fixtures_dir() / variant / "reference.safetensors");
  const at::Device cuda(at::kCUDA, 0);
  auto model = family(plugin)->from_pretrained(fixtures_dir() / variant, {.dtype = at::kFloat, .device = cuda});
  model->eval();
  at::NoGradGuard no_grad;

  auto ids = reference->tensor("input_ids").to(cuda);
  auto mask = reference->tensor("attention_mask").to(cuda);
  auto logits = model->forward(ids, mask).logits.cpu();
  auto keep = reference->tensor("attention_mask").to(at::kBool);
  double diff = (logits - reference->tensor("logits")).abs().index({keep}).max().item<double>();
  EXPECT_LE(diff, 1e-4) << variant;

  // Greedy decoding on the KV cache, all on the GPU.
  auto expected = reference->tensor("generated");
  const int64_t new_tokens = expected.size(1) - ids.size(1);
  KvCache cache = model->allocate_cache(ids.size(0), ids.size(1) + new_tokens);
  auto sequence = ids;
  auto running_mask = mask;
  auto step_logits = model->forward(ids, mask, &cache).logits;
  for (int64_t t = 0; t < new_tokens; ++t) {
    auto next = step_logits.select(1, -1).argmax(-1, /*keepdim=*/true);
    sequence = at::cat({sequence, next}, 1);
    running_mask = at::cat({running_mask, at::ones_like(next)}, 1);
    if (t + 1 < new_tokens) step_logits = model->forward(next, running_mask, &cache).logits;
  }
  EXPECT_TRUE(sequence.cpu().equal(expected)) << variant << "\n" << sequence.cpu() << "\nvs\n" << expected;
}

// The `cuda` generation plugin on the GPU (static cache, CUDA graph) against `kv-cache` on the CPU: fp32 greedy
// tokens equal, seeded samples equal where the logits agree (they differ by rounding between the devices), and
// in bf16 the hybrid engine's check holds at the low-precision threshold.
TEST_P(CudaParity, CudaDecodingMatchesTheCpuPick) {
  const std::string variant = GetParam();
  auto reference = safetensors::File::open(fixtures_dir() / variant / "reference.safetensors");
  auto ids = reference->tensor("input_ids");
  auto mask = reference->tensor("attention_mask");
  const at::Device cuda(at::kCUDA, 0);
  auto cpu_model = family(plugin_of(variant))->from_pretrained(fixtures_dir() / variant, {});
  auto gpu_model = family(plugin_of(variant))->from_pretrained(fixtures_dir() / variant, {.dtype = at::kFloat, .device = cuda});
  cpu_model->eval();
  gpu_model->eval();
  auto on_gpu = generator("cuda"), on_cpu = generator("kv-cache");
  auto options = on_cpu->defaults();
  options.max_new_tokens = 24;
  options.pad_token_id = 1;
  options.do_sample = false;
  auto want = on_cpu->generate(*cpu_model, ids, mask, options);
  auto got = on_gpu->generate(*gpu_model, ids, mask, options);
  EXPECT_TRUE(got.sequences.cpu().equal(want.sequences)) << variant << "\n" << got.sequences.cpu() << "\nvs\n" << want.sequences;
  EXPECT_LT((got.logprobs.cpu() - want.logprobs).abs().max().item<double>(), 1e-3) << variant;

  options.do_sample = true;
  options.temperature = 0.9;
  options.top_k = 40;
  options.top_p = 0.95;
  int64_t same_rows = 0, rows = 0;
  for (uint64_t seed : {1, 2, 3, 4}) {
    options.seed = seed;
    auto a = on_cpu->generate(*cpu_model, ids, mask, options).sequences;
    auto b = on_gpu->generate(*gpu_model, ids, mask, options).sequences.cpu();
    ASSERT_EQ(a.sizes(), b.sizes()) << variant;  // no eos: every row makes max_new_tokens
    for (int64_t r = 0; r < a.size(0); ++r, ++rows) same_rows += a[r].equal(b[r]);
  }
  EXPECT_GE(same_rows * 10, rows * 9) << variant << ": " << same_rows << " of " << rows << " sampled rows equal";

  auto bf16_model = family(plugin_of(variant))->from_pretrained(fixtures_dir() / variant, {.dtype = at::kBFloat16, .device = cuda});
  bf16_model->eval();
  options.seed = 9;
  auto out = on_gpu->generate(*bf16_model, ids, mask, options);
  auto agreement = logprob_agreement(*bf16_model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 0);
  EXPECT_LE(agreement.mean_abs_diff, 0.1) << variant << " (max " << agreement.max_abs_diff << ")";
}

INSTANTIATE_TEST_SUITE_P(Families, CudaParity,
                         ::testing::Values("opt", "opt350m", "bloom", "llama", "llama3_scaled", "llama_linear"));

}  // namespace
