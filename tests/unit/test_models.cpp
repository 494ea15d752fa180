// Model plugins (OPT, BLOOM, LLaMA) against transformers on tiny random checkpoints made by
// tools/make_model_fixtures.py: logits with left padding, KV-cache decoding, greedy generation, export back to
// transformers, dtype conversion, LoRA fuse/unfuse and bad checkpoints.
#include <cstdlib>
#include <fstream>
#include <mutex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_support.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/alibi.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/nn/rotary.h"
#include "dschat/sdk/nn/value_head.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/safetensors.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

const fs::path kFixtures = fs::path(DSCHAT_BINARY_DIR) / "test-data" / "models";
const fs::path kScratch = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "models";
constexpr double kTolerance = 1e-4;

// The fixtures are ~2.6 MB, too big to commit: made once into the build folder (about 10 s), and again when
// the generator changes.
void ensure_fixtures() {
  static std::once_flag once;
  std::call_once(once, [] {
    const fs::path script = fs::path(DSCHAT_SOURCE_DIR) / "tools" / "make_model_fixtures.py";
    const fs::path stamp = kFixtures / "fixtures.json";
    if (fs::exists(stamp) && fs::last_write_time(stamp) >= fs::last_write_time(script)) return;
    fs::create_directories(kFixtures);
    const std::string command = std::string(DSCHAT_TEST_PYTHON) + " " + script.string() + " " +
                                kFixtures.string() + " > " + (kFixtures / "make.log").string() + " 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << "fixture generation failed; see " << (kFixtures / "make.log");
  });
}

// Through the host's registry, exactly as `dschat` loads the plugin.
std::shared_ptr<ModelFamily> load_family(const std::string& name) {
  static PluginRegistry registry;  // keeps every library it loaded; the families outlive each test
  static auto document = ConfigDocument::parse_string("", "test", ".");
  const std::string file = std::string(DSCHAT_BINARY_DIR) + "/lib/dschat/plugins/libdschat-" + name + ".so";
  auto family = registry.create_from_library<ModelFamily>(file, document->root());
  EXPECT_EQ(family->model_type(), name);
  return family;
}

std::shared_ptr<ModelFamily> family(const std::string& plugin) {
  static std::map<std::string, std::shared_ptr<ModelFamily>> cache;
  auto& slot = cache[plugin];
  if (!slot) slot = load_family(plugin);
  return slot;
}

std::string plugin_of(const std::string& variant) {
  for (const char* p : {"opt", "bloom", "llama"}) {
    if (variant.rfind(p, 0) == 0) return p;
  }
  return variant;
}

std::map<std::string, at::Tensor> read_tensors(const fs::path& file) {
  auto f = safetensors::File::open(file);
  std::map<std::string, at::Tensor> out;
  for (const auto& info : f->tensors()) out[info.name] = f->tensor(info).clone();
  return out;
}

struct Fixture {
  fs::path dir;
  std::shared_ptr<ModelFamily> family;
  std::map<std::string, at::Tensor> ref;
};

Fixture fixture(const std::string& variant) {
  ensure_fixtures();
  Fixture f{kFixtures / variant, family(plugin_of(variant)), {}};
  f.ref = read_tensors(f.dir / "reference.safetensors");
  return f;
}

// Max |a - b| over real-token positions (padding logits are arbitrary in both implementations).
double masked_max_diff(const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask) {
  EXPECT_EQ(a.sizes(), b.sizes());
  auto keep = mask.to(at::kBool);
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().index({keep}).max().item<double>();
}

// A minimal greedy loop on the KV cache (the generation plugins come later).
at::Tensor greedy(CausalLM& model, const at::Tensor& ids, const at::Tensor& mask, int64_t new_tokens) {
  at::NoGradGuard no_grad;
  auto cache = model.allocate_cache(ids.size(0), ids.size(1) + new_tokens);
  auto sequence = ids, full_mask = mask;
  auto logits = model.forward(ids, mask, &cache).logits;
  for (int64_t i = 0; i < new_tokens; ++i) {
    auto next = logits.select(1, logits.size(1) - 1).argmax(-1, /*keepdim=*/true);
    sequence = at::cat({sequence, next}, 1);
    full_mask = at::cat({full_mask, at::ones_like(next)}, 1);
    if (i + 1 < new_tokens) logits = model.forward(next, full_mask, &cache).logits;
  }
  return sequence;
}

using dschat::testing::error_of;

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, LogitsMatchTransformersWithLeftPadding) {
  auto f = fixture(GetParam());
  auto model = f.family->from_pretrained(f.dir, {});
  at::NoGradGuard no_grad;
  auto logits = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  EXPECT_LE(masked_max_diff(logits, f.ref["logits"], f.ref["attention_mask"]), kTolerance);
}

TEST_P(Parity, KvCacheDecodingMatchesTransformersAndFullForward) {
  auto f = fixture(GetParam());
  auto model = f.family->from_pretrained(f.dir, {});
  at::NoGradGuard no_grad;
  const auto& ids = f.ref["input_ids"];
  const auto& mask = f.ref["attention_mask"];
  const auto& steps = f.ref["step_ids"];
  const int64_t n = steps.size(1);
  auto cache = model->allocate_cache(ids.size(0), ids.size(1) + n);
  // Prefill in two chunks: the second has several queries over a non-empty cache (the case is_causal gets wrong).
  const int64_t split = 3;
  auto first = model->forward(ids.narrow(1, 0, split), mask.narrow(1, 0, split), &cache).logits;
  auto second = model->forward(ids.narrow(1, split, ids.size(1) - split), mask, &cache).logits;
  EXPECT_LE(masked_max_diff(at::cat({first, second}, 1), f.ref["logits"], mask), kTolerance);
  auto full_mask = mask;
  std::vector<at::Tensor> step_logits;
  for (int64_t s = 0; s < n; ++s) {
    full_mask = at::cat({full_mask, at::ones({ids.size(0), 1}, at::kLong)}, 1);
    step_logits.push_back(model->forward(steps.narrow(1, s, 1), full_mask, &cache).logits.squeeze(1));
  }
  EXPECT_EQ(cache.length, ids.size(1) + n);
  auto cached = at::stack(step_logits, 1);
  EXPECT_LE((cached - f.ref["step_logits"]).abs().max().item<double>(), kTolerance);
  auto full = model->forward(at::cat({ids, steps}, 1), full_mask).logits.narrow(1, ids.size(1), n);
  EXPECT_LE((cached - full).abs().max().item<double>(), kTolerance);
}

TEST_P(Parity, GreedyGenerationMatchesTransformers) {
  auto f = fixture(GetParam());
  auto model = f.family->from_pretrained(f.dir, {});
  const auto& expected = f.ref["generated"];
  auto generated = greedy(*model, f.ref["input_ids"], f.ref["attention_mask"],
                          expected.size(1) - f.ref["input_ids"].size(1));
  EXPECT_TRUE(generated.equal(expected)) << "dschat:\n" << generated << "\ntransformers:\n" << expected;
}

TEST_P(Parity, HiddenStatesFeedAValueHead) {
  auto f = fixture(GetParam());
  auto model = f.family->from_pretrained(f.dir, {});
  at::NoGradGuard no_grad;
  auto out = model->forward(f.ref["input_ids"], f.ref["attention_mask"], nullptr, /*return_hidden=*/true,
                            /*return_logits=*/false);
  EXPECT_FALSE(out.logits.defined());
  ASSERT_EQ(out.hidden.size(-1), model->dims().output_hidden_size);
  ValueHead head(model->dims().output_hidden_size);
  EXPECT_EQ(head->forward(out.hidden).sizes(), f.ref["input_ids"].sizes());
}

INSTANTIATE_TEST_SUITE_P(Models, Parity,
                         ::testing::Values("opt", "opt350m", "bloom", "llama", "llama3_scaled", "llama_linear"));

TEST(ModelExport, TransformersLoadsEveryExportIncludingFusedLora) {
  ensure_fixtures();
  std::string pairs;
  for (std::string variant : {"opt", "opt350m", "bloom", "llama", "llama3_scaled"}) {
    auto f = fixture(variant);
    auto model = f.family->from_pretrained(f.dir, {});
    // A LoRA adapter with non-zero L, so the export must fold it in to agree with dschat's own logits.
    enable_lora(*model, f.family->lora_target_modules(), {.rank = 4});
    {
      at::NoGradGuard no_grad;
      for (auto& p : model->named_parameters()) {
        if (p.key().find("lora_left_weight") != std::string::npos) p.value().normal_(0.0, 0.05);
      }
    }
    at::Tensor logits;
    {
      at::NoGradGuard no_grad;
      logits = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
    }
    EXPECT_GT(masked_max_diff(logits, f.ref["logits"], f.ref["attention_mask"]), 1e-3) << "LoRA had no effect";
    const fs::path out = kScratch / ("export-" + variant);
    fs::remove_all(out);
    f.family->export_hf(*model, out);
    auto config = read_hf_config(out);
    EXPECT_EQ(config["model_type"], plugin_of(variant));
    EXPECT_TRUE(fs::exists(out / "generation_config.json"));
    auto names = safetensors::CheckpointReader::open(out).names();
    for (const auto& name : names) EXPECT_EQ(name.find("lora"), std::string::npos) << name;
    const fs::path expected = kScratch / ("export-" + variant + ".expected.safetensors");
    safetensors::save_file(expected, {{"input_ids", f.ref["input_ids"]},
                                      {"attention_mask", f.ref["attention_mask"]},
                                      {"logits", logits.contiguous()}});
    pairs += " " + out.string() + "=" + expected.string();
  }
  const fs::path log = kScratch / "check_hf_export.log";
  const std::string command = std::string(DSCHAT_TEST_PYTHON) + " " + DSCHAT_SOURCE_DIR +
                              "/tests/scripts/check_hf_export.py" + pairs + " > " + log.string() + " 2>&1";
  const int rc = std::system(command.c_str());
  std::ifstream in(log);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(rc, 0) << text;
}

TEST(ModelDtype, Float32CheckpointIntoBfloat16AndBack) {
  auto f = fixture("llama");
  auto model = f.family->from_pretrained(f.dir, {.dtype = at::kBFloat16});
  EXPECT_EQ(model->dtype(), at::kBFloat16);
  at::NoGradGuard no_grad;
  auto logits = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  EXPECT_EQ(logits.scalar_type(), at::kBFloat16);
  const double scale = f.ref["logits"].abs().max().item<double>();
  EXPECT_LE(masked_max_diff(logits, f.ref["logits"], f.ref["attention_mask"]), 0.05 * scale);

  const fs::path out = kScratch / "export-llama-bf16";
  fs::remove_all(out);
  f.family->export_hf(*model, out);
  EXPECT_EQ(read_hf_config(out)["torch_dtype"], "bfloat16");
  EXPECT_EQ(safetensors::CheckpointReader::open(out).info("model.embed_tokens.weight").dtype, at::kBFloat16);
  auto back = f.family->from_pretrained(out, {.dtype = at::kFloat});
  auto original = model->named_parameters();
  for (const auto& p : back->named_parameters()) {
    EXPECT_TRUE(p.value().equal(original[p.key()].to(at::kFloat))) << p.key();
  }
}

TEST(ModelLora, FuseAndUnfuseAreExact) {
  auto f = fixture("opt");
  auto model = f.family->from_pretrained(f.dir, {});
  at::NoGradGuard no_grad;
  auto before = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  const auto q_weight = model->named_parameters()["model.decoder.layers.0.self_attn.q_proj.weight"].clone();
  EXPECT_EQ(enable_lora(*model, {"q_proj", "fc1"}, {.rank = 8}), 4u);  // 2 layers x 2 targets
  auto with_zero_l = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  EXPECT_TRUE(with_zero_l.equal(before)) << "L starts at zero, so the adapter must start as a no-op";
  for (auto& p : model->named_parameters()) {
    if (p.key().find("lora_left_weight") != std::string::npos) p.value().normal_(0.0, 0.1);
  }
  auto adapted = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  fuse_lora(*model);
  auto fused = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  EXPECT_LE((fused - adapted).abs().max().item<double>(), 1e-4);
  EXPECT_GT((fused - before).abs().max().item<double>(), 1e-3);
  unfuse_lora(*model);
  const auto& q_after = model->named_parameters()["model.decoder.layers.0.self_attn.q_proj.weight"];
  EXPECT_LE((q_after - q_weight).abs().max().item<double>(), 1e-6);
  EXPECT_THROW(enable_lora(*model, {"no_such_proj"}, {}), std::exception);
}

TEST(ModelSpec, TensorParallelAndLoraTargetsCoverTheModel) {
  auto f = fixture("llama");
  auto model = f.family->build(read_hf_config(f.dir), {});
  std::map<std::string, TensorSplit> spec;
  for (const auto& [name, split] : f.family->tensor_parallel_spec(*model)) spec[name] = split;
  EXPECT_EQ(spec.size(), model->named_parameters().size());
  EXPECT_EQ(spec.at("model.layers.0.self_attn.q_proj.weight"), TensorSplit::rows);
  EXPECT_EQ(spec.at("model.layers.1.self_attn.k_proj.weight"), TensorSplit::rows);
  EXPECT_EQ(spec.at("model.layers.0.self_attn.o_proj.weight"), TensorSplit::columns);
  EXPECT_EQ(spec.at("model.layers.0.mlp.down_proj.weight"), TensorSplit::columns);
  EXPECT_EQ(spec.at("model.layers.0.mlp.gate_proj.weight"), TensorSplit::rows);
  EXPECT_EQ(spec.at("model.layers.0.input_layernorm.weight"), TensorSplit::replicated);
  EXPECT_EQ(spec.at("lm_head.weight"), TensorSplit::rows);
  for (const auto& plugin : {"opt", "bloom", "llama"}) {
    auto fam = family(plugin);
    auto targets = fam->lora_target_modules();
    auto variant_model = fam->build(read_hf_config(kFixtures / plugin), {});
    EXPECT_GT(enable_lora(*variant_model, targets, {.rank = 2}), 0u) << plugin;
  }
  // BLOOM's fused qkv splits by rows too: its rows are head-major ([head][q|k|v][dim]).
  auto bloom = family("bloom");
  auto bloom_model = bloom->build(read_hf_config(kFixtures / "bloom"), {});
  for (const auto& [name, split] : bloom->tensor_parallel_spec(*bloom_model)) {
    if (name == "transformer.h.0.self_attention.query_key_value.weight") EXPECT_EQ(split, TensorSplit::rows);
    if (name == "transformer.h.0.self_attention.dense.weight") EXPECT_EQ(split, TensorSplit::columns);
    if (name == "transformer.h.0.self_attention.dense.bias") EXPECT_EQ(split, TensorSplit::replicated);
  }
}

// A copy of a fixture folder whose config.json or tensors the test then breaks.
fs::path broken_copy(const std::string& variant, const std::string& label) {
  const fs::path dir = kScratch / ("broken-" + label);
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors"}) fs::copy_file(kFixtures / variant / file, dir / file);
  return dir;
}

void write_json(const fs::path& file, const nlohmann::json& j) { std::ofstream(file) << j.dump(2); }

TEST(ModelBadInput, ShapeDisagreeingWithConfigNamesTheTensor) {
  ensure_fixtures();
  auto dir = broken_copy("opt", "shape");
  auto config = read_hf_config(dir);
  config["ffn_dim"] = 96;  // the checkpoint's fc1 is [128, 64]
  write_json(dir / "config.json", config);
  auto message = error_of([&] { family("opt")->from_pretrained(dir, {}); });
  EXPECT_NE(message.find("tensor 'model.decoder.layers.0.fc1.weight' has shape [128, 64] but config.json implies "
                         "[96, 64]"),
            std::string::npos)
      << message;
  EXPECT_NE(message.find(dir.string()), std::string::npos) << message;
}

TEST(ModelBadInput, MissingAndUnexpectedTensorsAreNamed) {
  ensure_fixtures();
  auto dir = broken_copy("llama", "missing");
  auto tensors = read_tensors(kFixtures / "llama" / "model.safetensors");
  std::vector<std::pair<std::string, at::Tensor>> kept;
  for (auto& [name, t] : tensors) {
    if (name != "model.layers.1.mlp.up_proj.weight") kept.emplace_back(name, t);
  }
  safetensors::save_file(dir / "model.safetensors", kept);
  auto message = error_of([&] { family("llama")->from_pretrained(dir, {}); });
  EXPECT_NE(message.find("missing tensor 'model.layers.1.mlp.up_proj.weight'"), std::string::npos) << message;

  kept.emplace_back("model.layers.1.mlp.up_proj.weight", tensors["model.layers.1.mlp.up_proj.weight"]);
  kept.emplace_back("model.layers.9.extra.weight", at::zeros({2}));
  safetensors::save_file(dir / "model.safetensors", kept);
  message = error_of([&] { family("llama")->from_pretrained(dir, {}); });
  EXPECT_NE(message.find("unexpected tensor 'model.layers.9.extra.weight'"), std::string::npos) << message;
}

// facebook/opt-* store the bare base model ("decoder.layers..."), plus a copy of the tied head.
TEST(ModelLoad, BaseModelCheckpointWithoutPrefixAndTiedHeadCopy) {
  auto f = fixture("opt");
  auto dir = broken_copy("opt", "bare");
  std::vector<std::pair<std::string, at::Tensor>> renamed;
  for (auto& [name, t] : read_tensors(f.dir / "model.safetensors")) {
    renamed.emplace_back(name.rfind("model.", 0) == 0 ? name.substr(6) : name, t);
    if (name == "model.decoder.embed_tokens.weight") renamed.emplace_back("lm_head.weight", t);
  }
  safetensors::save_file(dir / "model.safetensors", renamed);
  auto model = f.family->from_pretrained(dir, {});
  at::NoGradGuard no_grad;
  auto logits = model->forward(f.ref["input_ids"], f.ref["attention_mask"]).logits;
  EXPECT_LE(masked_max_diff(logits, f.ref["logits"], f.ref["attention_mask"]), kTolerance);
}

TEST(ModelBadInput, UnknownModelTypeAndBadConfig) {
  ensure_fixtures();
  std::vector<std::shared_ptr<ModelFamily>> families = {family("opt"), family("bloom"), family("llama")};
  auto config = read_hf_config(kFixtures / "opt");
  EXPECT_EQ(select_family(config, families).model_type(), "opt");
  config["model_type"] = "gpt_neox";
  auto message = error_of([&] { select_family(config, families); });
  EXPECT_NE(message.find("model_type 'gpt_neox' has no model plugin (available: opt, bloom, llama)"),
            std::string::npos)
      << message;

  message = error_of([&] { family("opt")->from_pretrained(kFixtures / "llama", {}); });
  EXPECT_NE(message.find("model_type 'llama' is not handled by the 'opt' model plugin"), std::string::npos) << message;

  auto llama = read_hf_config(kFixtures / "llama");
  llama.erase("hidden_size");
  message = error_of([&] { family("llama")->build(llama, {}); });
  EXPECT_NE(message.find("missing required key 'hidden_size'"), std::string::npos) << message;
  llama = read_hf_config(kFixtures / "llama");
  llama["num_key_value_heads"] = 3;
  message = error_of([&] { family("llama")->build(llama, {}); });
  EXPECT_NE(message.find("num_attention_heads 4 is not a multiple of num_key_value_heads 3"), std::string::npos)
      << message;
  llama = read_hf_config(kFixtures / "llama");
  llama["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  message = error_of([&] { family("llama")->build(llama, {}); });
  EXPECT_NE(message.find("unsupported rope type 'yarn'"), std::string::npos) << message;
}

TEST(ModelLayers, RopeConfigReadsTransformers4And5Layouts) {
  // LLaMA-3.1's own config.json (transformers 4.x layout) vs the 5.x layout of the same parameters.
  nlohmann::json v4 = {{"max_position_embeddings", 131072},
                       {"rope_theta", 500000.0},
                       {"rope_scaling",
                        {{"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"}}}};
  nlohmann::json v5 = {{"max_position_embeddings", 131072},
                       {"rope_parameters",
                        {{"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}, {"rope_type", "llama3"},
                         {"rope_theta", 500000.0}}}};
  auto a = RopeConfig::from_hf(v4, 128), b = RopeConfig::from_hf(v5, 128);
  EXPECT_EQ(a.type, "llama3");
  EXPECT_EQ(a.original_max_position_embeddings, 8192);
  EXPECT_TRUE(rope_inv_freq(a).equal(rope_inv_freq(b)));
  // llama3 leaves the high frequencies alone and divides the low ones by the factor.
  auto plain = rope_inv_freq(RopeConfig::from_hf({{"rope_theta", 500000.0}}, 128));
  auto scaled = rope_inv_freq(a);
  EXPECT_FLOAT_EQ(scaled[0].item<float>(), plain[0].item<float>());
  EXPECT_FLOAT_EQ(scaled[63].item<float>(), plain[63].item<float>() / 8);
}

TEST(ModelLayers, AlibiSlopesForPowerOfTwoAndOtherHeadCounts) {
  auto s8 = alibi_slopes(8);
  for (int h = 0; h < 8; ++h) EXPECT_FLOAT_EQ(s8[h].item<float>(), std::pow(2.0f, -(h + 1.0f)));
  auto s6 = alibi_slopes(6);  // 4 slopes of base 2^-2, then slopes 1 and 3 of the 8-head series
  ASSERT_EQ(s6.size(0), 6);
  EXPECT_FLOAT_EQ(s6[0].item<float>(), 0.25f);
  EXPECT_FLOAT_EQ(s6[4].item<float>(), std::pow(2.0f, -1.0f));
  EXPECT_FLOAT_EQ(s6[5].item<float>(), std::pow(2.0f, -3.0f));
}

}  // namespace
