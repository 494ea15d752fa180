// Generation plugins (`eager`, `kv-cache`, `cuda` on the CPU) and the hybrid engine's generation view, on the tiny
// random OPT, LLaMA and BLOOM checkpoints of tools/make_model_fixtures.py, loaded through the host registry like a pipeline would.
#include <cstdlib>
#include <mutex>
#include <sstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "plugin_helpers.h"
#include "test_support.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/hybrid_engine.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/linear.h"

namespace fs = std::filesystem;
using namespace dschat;

namespace {

const fs::path kFixtures = fs::path(DSCHAT_BINARY_DIR) / "test-data" / "generation-models";

// Our own copy of three variants (a few seconds), so this test never races test_models over its fixture folder.
void ensure_fixtures() {
  static std::once_flag once;
  std::call_once(once, [] {
    const fs::path script = fs::path(DSCHAT_SOURCE_DIR) / "tools" / "make_model_fixtures.py";
    const fs::path stamp = kFixtures / "fixtures.json";
    if (fs::exists(stamp) && fs::last_write_time(stamp) >= fs::last_write_time(script)) return;
    fs::create_directories(kFixtures);
    const std::string command = std::string(DSCHAT_TEST_PYTHON) + " " + script.string() + " " +
                                kFixtures.string() + " --variants opt,llama,bloom > " + (kFixtures / "make.log").string() +
                                " 2>&1";
    ASSERT_EQ(std::system(command.c_str()), 0) << "fixture generation failed; see " << (kFixtures / "make.log");
  });
}

using dschat::testing::registry;

using dschat::testing::table;

std::shared_ptr<Generator> generator(const std::string& name, const std::string& options = "") {
  return registry().create<Generator>(name, table(options));
}

std::shared_ptr<ModelFamily> family(const std::string& name) { return registry().create<ModelFamily>(name, table("")); }

std::shared_ptr<CausalLM> load(const std::string& variant) {
  ensure_fixtures();
  return family(variant)->from_pretrained(kFixtures / variant, {});
}

// A left-padded batch of random prompts with real lengths `lengths` (tokens 3..vocab-1, so no pad/eos id).
std::pair<at::Tensor, at::Tensor> prompts(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed = 5) {
  const int64_t width = *std::max_element(lengths.begin(), lengths.end());
  auto gen = generation::make_cpu_generator(seed);
  auto ids = at::randint(3, vocab, {static_cast<int64_t>(lengths.size()), width}, gen, at::kLong);
  auto mask = at::zeros_like(ids);
  for (size_t i = 0; i < lengths.size(); ++i) {
    mask[i].narrow(0, width - lengths[i], lengths[i]).fill_(1);
  }
  return {ids.masked_fill(mask == 0, 1), mask};
}

SamplingOptions greedy(const Generator& g, int64_t new_tokens) {
  auto o = g.defaults();
  o.do_sample = false;
  o.max_new_tokens = new_tokens;
  o.pad_token_id = 1;
  return o;
}

using dschat::testing::error_of;

class Greedy : public ::testing::TestWithParam<std::string> {};

TEST_P(Greedy, KvCacheMatchesEagerWithEosMidway) {
  auto model = load(GetParam());
  model->eval();
  auto eager = generator("eager"), kv = generator("kv-cache");
  auto [ids, mask] = prompts({7, 3, 5, 1}, model->dims().vocab_size);
  constexpr int64_t kNew = 12;

  // Without eos every row runs to max_new_tokens.
  auto free_run = eager->generate(*model, ids, mask, greedy(*eager, kNew));
  ASSERT_EQ(free_run.sequences.size(1), ids.size(1) + kNew);
  auto free_kv = kv->generate(*model, ids, mask, greedy(*kv, kNew));
  ASSERT_TRUE(at::equal(free_kv.sequences, free_run.sequences));

  // eos := a token that some row emits midway and that another row never emits, so rows end at different steps.
  auto answers = free_run.sequences.narrow(1, ids.size(1), kNew);
  int64_t eos = -1;
  for (int64_t step = 2; step < kNew - 2 && eos < 0; ++step) {
    for (int64_t row = 0; row < answers.size(0) && eos < 0; ++row) {
      const int64_t token = answers[row][step].item<int64_t>();
      bool earlier = answers[row].narrow(0, 0, step).eq(token).any().item<bool>();
      bool someone_never = (answers.eq(token).sum(1) == 0).any().item<bool>();
      if (!earlier && someone_never) eos = token;
    }
  }
  ASSERT_GE(eos, 0) << "no usable eos candidate in " << answers;

  auto o_eager = greedy(*eager, kNew), o_kv = greedy(*kv, kNew);
  o_eager.eos_token_ids = o_kv.eos_token_ids = {eos};
  auto e = eager->generate(*model, ids, mask, o_eager);
  auto k = kv->generate(*model, ids, mask, o_kv);
  EXPECT_TRUE(at::equal(k.sequences, e.sequences)) << k.sequences << "\n" << e.sequences;
  EXPECT_TRUE(at::equal(k.answer_mask, e.answer_mask));
  EXPECT_TRUE(at::equal(k.attention_mask, e.attention_mask));
  EXPECT_LT((k.logprobs - e.logprobs).abs().max().item<double>(), 1e-4);
  EXPECT_TRUE(at::equal(k.sequences.narrow(1, 0, ids.size(1)), ids));  // prompt returned as given

  // Each row: the free run's tokens up to and including its first eos, then padding.
  const int64_t answer_len = k.answer_mask.size(1);
  int64_t ended_early = 0, ran_out = 0;
  for (int64_t row = 0; row < ids.size(0); ++row) {
    auto free_answer = answers[row];
    auto hits = at::nonzero(free_answer.eq(eos));
    const int64_t len = hits.numel() ? hits[0][0].item<int64_t>() + 1 : kNew;
    (len < kNew ? ended_early : ran_out)++;
    auto got = k.sequences[row].narrow(0, ids.size(1), answer_len);
    EXPECT_EQ(k.answer_mask[row].sum().item<int64_t>(), len) << "row " << row;
    EXPECT_TRUE(at::equal(got.narrow(0, 0, len), free_answer.narrow(0, 0, len))) << "row " << row;
    if (len < answer_len) EXPECT_TRUE(got.narrow(0, len, answer_len - len).eq(1).all().item<bool>());
    EXPECT_TRUE(k.logprobs[row].narrow(0, len, answer_len - len).eq(0).all().item<bool>());
  }
  EXPECT_GE(ended_early, 1);
  EXPECT_GE(ran_out, 1);
  EXPECT_EQ(answer_len, kNew);  // a row that never hits eos keeps the batch to max_new_tokens
  EXPECT_TRUE((k.logprobs.masked_select(k.answer_mask.ne(0)) < 0).all().item<bool>());
}

INSTANTIATE_TEST_SUITE_P(Models, Greedy, ::testing::Values("opt", "llama"));

TEST(Sampling, FixedSeedIsReproducibleAndSeedsDiffer) {
  auto model = load("llama");
  model->eval();
  auto kv = generator("kv-cache", "temperature = 1.3\ntop_k = 50\ntop_p = 0.95");
  auto eager = generator("eager", "temperature = 1.3\ntop_k = 50\ntop_p = 0.95");
  auto [ids, mask] = prompts({6, 2, 4}, model->dims().vocab_size);
  auto o = kv->defaults();
  EXPECT_TRUE(o.do_sample);
  EXPECT_DOUBLE_EQ(o.temperature, 1.3);
  o.max_new_tokens = 16;
  o.pad_token_id = 1;
  o.eos_token_ids = {2, 7, 11};  // some rows will likely stop; draws must not depend on which
  o.seed = 7;
  auto a = kv->generate(*model, ids, mask, o);
  auto b = kv->generate(*model, ids, mask, o);
  EXPECT_TRUE(at::equal(a.sequences, b.sequences));
  EXPECT_TRUE(at::equal(a.logprobs, b.logprobs));
  // The reference decoder draws the same uniforms per (row, step), so it samples the same tokens.
  auto e = eager->generate(*model, ids, mask, o);
  EXPECT_TRUE(at::equal(a.sequences, e.sequences)) << a.sequences << "\n" << e.sequences;
  o.seed = 8;
  auto c = kv->generate(*model, ids, mask, o);
  EXPECT_FALSE(at::equal(a.sequences, c.sequences));

  // Without a per-call seed: the generator's own stream, seeded by its `seed` option, advancing call to call.
  o.seed.reset();
  auto s1 = generator("kv-cache", "seed = 99"), s2 = generator("kv-cache", "seed = 99");
  auto first = s1->generate(*model, ids, mask, o);
  auto second = s1->generate(*model, ids, mask, o);
  auto again = s2->generate(*model, ids, mask, o);
  EXPECT_FALSE(at::equal(first.sequences, second.sequences));
  EXPECT_TRUE(at::equal(first.sequences, again.sequences));
}

TEST(Sampling, TopKOneAndTinyTopPAreGreedy) {
  auto model = load("opt");
  model->eval();
  auto kv = generator("kv-cache");
  auto [ids, mask] = prompts({5, 5, 2}, model->dims().vocab_size);
  auto reference = kv->generate(*model, ids, mask, greedy(*kv, 10));
  auto o = kv->defaults();
  o.max_new_tokens = 10;
  o.pad_token_id = 1;
  o.temperature = 2.5;  // flat distribution: without the filter these samples would wander off
  o.seed = 3;
  o.top_k = 1;
  auto k1 = kv->generate(*model, ids, mask, o);
  EXPECT_TRUE(at::equal(k1.sequences, reference.sequences));
  // Log-probs are of the raw logits, not of the filtered distribution (which would give 0 = log 1).
  EXPECT_LT((k1.logprobs - reference.logprobs).abs().max().item<double>(), 1e-5);
  o.top_k = 0;
  o.top_p = 1e-4;
  EXPECT_TRUE(at::equal(kv->generate(*model, ids, mask, o).sequences, reference.sequences));
  o.top_p = 1.0;
  EXPECT_FALSE(at::equal(kv->generate(*model, ids, mask, o).sequences, reference.sequences));
}

TEST(Sampling, MinNewTokensSuppressesEos) {
  auto model = load("opt");
  model->eval();
  auto kv = generator("kv-cache");
  auto [ids, mask] = prompts({4, 6}, model->dims().vocab_size);
  auto free_run = kv->generate(*model, ids, mask, greedy(*kv, 8));
  const int64_t eos = free_run.sequences[0][ids.size(1)].item<int64_t>();  // row 0's first token
  auto o = greedy(*kv, 8);
  o.eos_token_ids = {eos};
  auto stopped = kv->generate(*model, ids, mask, o);
  EXPECT_EQ(stopped.answer_mask[0].sum().item<int64_t>(), 1);  // without min_new_tokens: eos at once

  for (bool sample : {false, true}) {
    o.min_new_tokens = 5;
    o.do_sample = sample;
    o.seed = 11;
    auto out = kv->generate(*model, ids, mask, o);
    auto answers = out.sequences.narrow(1, ids.size(1), out.sequences.size(1) - ids.size(1));
    EXPECT_TRUE(out.answer_mask.sum(1).ge(5).all().item<bool>()) << out.answer_mask;
    EXPECT_FALSE(answers.narrow(1, 0, 5).eq(eos).any().item<bool>()) << answers;
  }
}

TEST(Options, BadValuesAreConfigErrors) {
  for (const char* text : {"max_new_tokens = 0", "min_new_tokens = -1", "temperature = 0.0", "top_p = 1.5",
                           "top_p = 0.0", "top_k = -2", "do_sample = \"yes\"", "max_new_tokens = 4\nmin_new_tokens = 5",
                           "seed = -1"}) {
    for (const char* name : {"kv-cache", "eager"}) {
      try {
        generator(name, text);
        ADD_FAILURE() << name << " accepted: " << text;
      } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("<test>:"), std::string::npos) << e.what();
      }
    }
  }
  auto defaults = generator("kv-cache")->defaults();
  EXPECT_EQ(defaults.max_new_tokens, 256);
  EXPECT_EQ(defaults.min_new_tokens, 0);
  EXPECT_TRUE(defaults.do_sample);
  EXPECT_EQ(defaults.top_k, 0);
  EXPECT_DOUBLE_EQ(defaults.top_p, 1.0);
}

TEST(Options, BadCallsAreClearErrors) {
  auto model = load("opt");
  auto kv = generator("kv-cache");
  auto [ids, mask] = prompts({3, 2}, model->dims().vocab_size);
  auto o = greedy(*kv, 4);
  o.temperature = -1;
  EXPECT_NE(error_of([&] { kv->generate(*model, ids, mask, o); }).find("temperature must be > 0"), std::string::npos);
  auto right_padded = mask.flip({1});
  EXPECT_NE(error_of([&] { kv->generate(*model, ids, right_padded, greedy(*kv, 4)); }).find("left-padded"),
            std::string::npos);
  EXPECT_NE(error_of([&] { kv->generate(*model, ids, mask.narrow(1, 0, 1), greedy(*kv, 4)); }).find("shape"),
            std::string::npos);
}

// ------------------------------------------------------------------------------------ hybrid engine

// LoRA on every target with a non-zero left matrix, so fusing really changes the weights.
void add_lora(CausalLM& model, const std::string& family_name) {
  enable_lora(model, family(family_name)->lora_target_modules(), {.rank = 4});
  at::NoGradGuard no_grad;
  auto gen = generation::make_cpu_generator(17);
  for (auto& item : model.named_parameters()) {
    if (item.key().find("lora_left_weight") != std::string::npos)
      item.value().copy_(at::randn(item.value().sizes(), gen) * 0.5);
  }
}

TEST(HybridEngine, ViewFusesLoraAndRestoresExactly) {
  auto model = load("opt");
  add_lora(*model, "opt");
  model->train();
  std::map<std::string, at::Tensor> before;
  for (auto& item : model->named_parameters()) before[item.key()] = item.value().detach().clone();
  int entered = 0, exited = 0;
  {
    GenerationView view(*model, {.on_enter = [&] { ++entered; }, .on_exit = [&] { ++exited; }});
    EXPECT_EQ(entered, 1);
    EXPECT_GT(view.fused_layers(), 0u);
    EXPECT_FALSE(model->is_training());
    EXPECT_FALSE(at::GradMode::is_enabled());
    // Fused: the base weights now hold W + s R L.
    bool changed = false;
    for (auto& item : model->named_parameters()) changed |= !at::equal(item.value(), before[item.key()]);
    EXPECT_TRUE(changed);
  }
  EXPECT_EQ(exited, 1);
  EXPECT_TRUE(model->is_training());
  EXPECT_TRUE(at::GradMode::is_enabled());
  for (auto& item : model->named_parameters()) EXPECT_TRUE(at::equal(item.value(), before[item.key()])) << item.key();
}

TEST(HybridEngine, KvCacheLogprobsMatchTrainingPath) {
  for (const std::string variant : {"opt", "llama"}) {
    auto model = load(variant);
    add_lora(*model, variant);
    model->train();
    auto kv = generator("kv-cache");
    auto [ids, mask] = prompts({6, 3, 5, 2}, model->dims().vocab_size);
    auto o = kv->defaults();
    o.max_new_tokens = 10;
    o.pad_token_id = 1;
    o.eos_token_ids = {2, 5};
    o.seed = 1;
    GenerationResult out;
    {
      GenerationView view(*model);
      out = kv->generate(*model, ids, mask, o);
    }
    // Outside the view: LoRA unfused, the training path's arithmetic.
    const double diff =
        logprob_consistency(*model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 0);
    EXPECT_LT(diff, 1e-4) << variant;
    EXPECT_NO_THROW(check_consistency(*model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 2,
                                      1e-4));
    EXPECT_TRUE(model->is_training());  // the check leaves the mode as it found it
  }
}

TEST(HybridEngine, CorruptedGenerationPathTripsTheCheck) {
  auto model = load("opt");
  auto corrupted = load("opt");
  {  // one weight of the generating copy off by a little, as a botched gather or fuse would leave it
    at::NoGradGuard no_grad;
    auto params = corrupted->named_parameters();
    auto* w = params.find("model.decoder.layers.1.self_attn.v_proj.weight");
    ASSERT_NE(w, nullptr);
    w->add_(0.05);
  }
  model->eval();
  corrupted->eval();
  auto kv = generator("kv-cache");
  auto [ids, mask] = prompts({6, 3, 5, 2}, model->dims().vocab_size);
  auto out = kv->generate(*corrupted, ids, mask, greedy(*kv, 8));
  const double diff = logprob_consistency(*model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 0);
  EXPECT_GT(diff, 1e-3);
  auto message = error_of([&] {
    check_consistency(*model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 4, 1e-3);
  });
  EXPECT_NE(message.find("generation and training log-probs disagree"), std::string::npos) << message;

  // Shifted positions: the generation path believing each prompt has one more padding column than it has.
  auto clean = kv->generate(*model, ids, mask, greedy(*kv, 8));
  auto shifted_mask = clean.attention_mask.clone();
  shifted_mask.narrow(1, 0, out.prompt_length).copy_(at::cat({at::zeros({mask.size(0), 1}, mask.options()),
                                                              mask.narrow(1, 0, mask.size(1) - 1)}, 1));
  auto shifted = kv->generate(*model, ids, shifted_mask.narrow(1, 0, out.prompt_length).contiguous(), greedy(*kv, 8));
  EXPECT_THROW(check_consistency(*model, shifted.sequences, clean.attention_mask, clean.prompt_length,
                                 shifted.logprobs, 0, 1e-3),
               ConsistencyError);
}

// The mean statistic low-precision actors are checked with: one token off by 1 (a rounding outlier) moves the
// largest difference by 1 and the mean by 1 / tokens; every token off (a real mismatch) moves both.
TEST(HybridEngine, AgreementReportsTheLargestAndTheMeanDifference) {
  auto model = load("opt");
  model->eval();
  auto kv = generator("kv-cache");
  auto [ids, mask] = prompts({6, 3, 5, 2}, model->dims().vocab_size);
  auto out = kv->generate(*model, ids, mask, greedy(*kv, 8));
  auto exact = logprob_agreement(*model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 0);
  EXPECT_LT(exact.max_abs_diff, 1e-4);
  EXPECT_LE(exact.mean_abs_diff, exact.max_abs_diff);

  const double tokens = out.answer_mask.sum().item<double>();
  auto one_off = out.logprobs.clone();
  one_off[0][0] += 1.0;
  auto outlier = logprob_agreement(*model, out.sequences, out.attention_mask, out.prompt_length, one_off, 0);
  EXPECT_NEAR(outlier.max_abs_diff, 1.0, 1e-3);
  EXPECT_NEAR(outlier.mean_abs_diff, 1.0 / tokens, 1e-3);

  auto all_off = out.logprobs + 0.5 * out.answer_mask.to(at::kFloat);
  auto mismatch = logprob_agreement(*model, out.sequences, out.attention_mask, out.prompt_length, all_off, 0);
  EXPECT_NEAR(mismatch.mean_abs_diff, 0.5, 1e-3);
  EXPECT_DOUBLE_EQ(logprob_consistency(*model, out.sequences, out.attention_mask, out.prompt_length, all_off, 0),
                   mismatch.max_abs_diff);
}

// ------------------------------------------------------------------------------------ cuda (its CPU twin)
// The `cuda` plugin keeps every row in a static batch, writes a static KV cache at a device-held column, draws
// every step's uniforms up front and picks on the device. Run on the CPU it takes the same steps without the CUDA
// graph, so its tokens must be kv-cache's: greedy and sampled, with eos midway, min_new_tokens and the stream.

class CudaTwin : public ::testing::TestWithParam<std::string> {};

void expect_same(const GenerationResult& a, const GenerationResult& b, const std::string& what) {
  EXPECT_TRUE(at::equal(a.sequences, b.sequences)) << what << "\n" << a.sequences << "\n" << b.sequences;
  EXPECT_TRUE(at::equal(a.answer_mask, b.answer_mask)) << what;
  EXPECT_TRUE(at::equal(a.attention_mask, b.attention_mask)) << what;
  ASSERT_EQ(a.logprobs.sizes(), b.logprobs.sizes()) << what;
  EXPECT_LT((a.logprobs - b.logprobs).abs().max().item<double>(), 1e-4) << what;
}

TEST_P(CudaTwin, TokensEqualKvCacheGreedyAndSampled) {
  auto model = load(GetParam());
  model->eval();
  const std::string sampling = "temperature = 1.3\ntop_k = 40\ntop_p = 0.9";
  auto kv = generator("kv-cache", sampling), twin = generator("cuda", sampling + "\nsync_every = 3");
  auto [ids, mask] = prompts({7, 3, 5, 1}, model->dims().vocab_size);
  constexpr int64_t kNew = 12;

  auto free_run = kv->generate(*model, ids, mask, greedy(*kv, kNew));
  expect_same(twin->generate(*model, ids, mask, greedy(*twin, kNew)), free_run, "greedy");

  // eos := row 0's fourth token, so that row ends midway while others may run on.
  auto o = greedy(*kv, kNew);
  o.eos_token_ids = {free_run.sequences[0][ids.size(1) + 3].item<int64_t>(), 2};
  auto ended = kv->generate(*model, ids, mask, o);
  ASSERT_LT(ended.answer_mask[0].sum().item<int64_t>(), kNew);
  expect_same(twin->generate(*model, ids, mask, o), ended, "greedy with eos");

  o.do_sample = true;
  o.seed = 21;
  expect_same(twin->generate(*model, ids, mask, o), kv->generate(*model, ids, mask, o), "sampled");
  o.min_new_tokens = 6;
  expect_same(twin->generate(*model, ids, mask, o), kv->generate(*model, ids, mask, o), "sampled, min_new_tokens");

  // Without a per-call seed both advance their own stream by the steps they ran, call after call.
  o.seed.reset();
  o.min_new_tokens = 0;
  auto kv_stream = generator("kv-cache", sampling + "\nseed = 5"), twin_stream = generator("cuda", sampling + "\nseed = 5");
  for (int call = 0; call < 3; ++call)
    expect_same(twin_stream->generate(*model, ids, mask, o), kv_stream->generate(*model, ids, mask, o),
                "stream call " + std::to_string(call));
}

TEST_P(CudaTwin, OnStepSeesTheRunningRowsAndCanStop) {
  auto model = load(GetParam());
  model->eval();
  auto kv = generator("kv-cache"), twin = generator("cuda");
  auto [ids, mask] = prompts({4, 6, 2}, model->dims().vocab_size);
  auto free_run = kv->generate(*model, ids, mask, greedy(*kv, 10));
  auto o = greedy(*kv, 10);
  o.eos_token_ids = {free_run.sequences[1][ids.size(1) + 2].item<int64_t>()};
  auto trace = [&](Generator& g) {
    std::vector<std::string> calls;
    auto options = o;
    options.on_step = [&](int64_t step, const at::Tensor& tokens, const at::Tensor& rows) {
      std::ostringstream line;
      line << step << ":";
      for (int64_t i = 0; i < rows.numel(); ++i) line << " " << rows[i].item<int64_t>() << "=" << tokens[i].item<int64_t>();
      calls.push_back(line.str());
      return step < 6;  // stop after step 6
    };
    auto out = g.generate(*model, ids, mask, options);
    return std::make_pair(calls, out);
  };
  auto [kv_calls, kv_out] = trace(*kv);
  auto [twin_calls, twin_out] = trace(*twin);
  EXPECT_EQ(twin_calls, kv_calls);
  EXPECT_GE(kv_calls.size(), 3u);
  EXPECT_LE(kv_calls.size(), 7u);
  expect_same(twin_out, kv_out, "on_step stop");
}

TEST_P(CudaTwin, HybridEngineCheckHolds) {
  auto model = load(GetParam());
  model->eval();
  auto twin = generator("cuda");
  auto [ids, mask] = prompts({6, 3, 5, 2}, model->dims().vocab_size);
  auto o = twin->defaults();
  o.max_new_tokens = 10;
  o.pad_token_id = 1;
  o.eos_token_ids = {2, 5};
  o.seed = 1;
  auto out = twin->generate(*model, ids, mask, o);
  EXPECT_LT(logprob_consistency(*model, out.sequences, out.attention_mask, out.prompt_length, out.logprobs, 0), 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaTwin, ::testing::Values("opt", "llama", "bloom"));

}  // namespace
