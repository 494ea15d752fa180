// The rule reward plugins (`exact-answer`, `length-penalty`), loaded through the host registry as a stage's
// rewards = [...] creates them, against hand-worked cases; their option errors at the option's file:line.
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "plugin_helpers.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/data.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/reward.h"
#include "dschat/sdk/reward_loss.h"
#include "dschat/sdk/reward_model.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"

using namespace dschat;
namespace fs = std::filesystem;
using dschat::testing::registry;
using dschat::testing::table;

namespace {

// One row per answer, each with its data row's `answer` field (a row without one when the expected text is
// "<none>").
struct Rows {
  std::vector<TextExample> examples;
  RewardBatch batch;
};

Rows rows(const std::vector<std::pair<std::string, std::string>>& answer_and_expected) {
  Rows r;
  r.examples.resize(answer_and_expected.size());
  for (size_t i = 0; i < answer_and_expected.size(); ++i) {
    r.examples[i].prompt = " Human: q" + std::to_string(i) + " Assistant:";
    if (answer_and_expected[i].second != "<none>") r.examples[i].fields["answer"] = answer_and_expected[i].second;
    r.batch.answers.push_back(answer_and_expected[i].first);
  }
  for (const auto& e : r.examples) r.batch.examples.push_back(&e);
  const auto b = static_cast<int64_t>(answer_and_expected.size());
  r.batch.sequences = at::zeros({b, 6}, at::kLong);
  r.batch.answer_mask = at::ones({b, 3}, at::kLong);
  r.batch.prompt_length = 3;
  return r;
}

std::vector<float> scores(RewardFunction& reward, const Rows& r) {
  auto s = reward.score(r.batch);
  EXPECT_EQ(s.scalar_type(), at::kFloat);
  EXPECT_EQ(s.dim(), 1);
  s = s.contiguous();
  return {s.data_ptr<float>(), s.data_ptr<float>() + s.numel()};
}

std::string config_error(const std::string& kind, const std::string& name, const std::string& options) {
  try {
    if (kind == "reward") registry().create<RewardFunction>(name, table(options));
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ExactAnswer, LastNumberComparedNumerically) {
  auto reward = registry().create<RewardFunction>("exact-answer", table(""));
  EXPECT_EQ(reward->required_fields(), std::vector<std::string>{"answer"});
  EXPECT_TRUE(reward->model_roles().empty());
  auto r = rows({{"so 3 + 4 = 7.", "7"},
                 {"The answer is 7.0", "7"},
                 {"It is -2", "2"},
                 {"That costs 1,000 dollars", "1000"},
                 {"I do not know", "7"},
                 {"first 7, then 8", "7"},
                 {"x-7 means 7", "7"},
                 {"about 3.5 km", "3.50"},
                 {"-2", "-2"},
                 {"seven", "seven"}});  // a field that is not a number never matches without a pattern
  EXPECT_EQ(scores(*reward, r), (std::vector<float>{1, 1, 0, 1, 0, 0, 1, 1, 1, 0}));
}

TEST(ExactAnswer, CorrectAndWrongValues) {
  auto reward = registry().create<RewardFunction>("exact-answer", table("correct = 2.0\nwrong = -0.5\n"));
  EXPECT_EQ(scores(*reward, rows({{"= 7", "7"}, {"= 8", "7"}})), (std::vector<float>{2.0f, -0.5f}));
}

TEST(ExactAnswer, PatternPicksTheFirstCaptureGroup) {
  auto reward = registry().create<RewardFunction>("exact-answer", table(R"(pattern = 'is (\w+)\.')"));
  auto r = rows({{"The capital of France is Paris.", "Paris"},
                 {"The capital is Lyon.", "Paris"},
                 {"Paris, I think", "Paris"},        // no match
                 {"It is Paris. Or it is Rome.", " Paris "}});  // the first match; the field is trimmed
  EXPECT_EQ(scores(*reward, r), (std::vector<float>{1, 0, 0, 1}));
  // Without a group: the whole match.
  auto whole = registry().create<RewardFunction>("exact-answer", table(R"(pattern = '\d+ apples')"));
  EXPECT_EQ(scores(*whole, rows({{"I have 3 apples", "3 apples"}, {"I have 4 apples", "3 apples"}})),
            (std::vector<float>{1, 0}));
}

TEST(ExactAnswer, OtherFieldIsRequired) {
  auto reward = registry().create<RewardFunction>("exact-answer", table("field = \"solution\""));
  EXPECT_EQ(reward->required_fields(), std::vector<std::string>{"solution"});
  Rows r = rows({{"= 7", "<none>"}});
  r.examples[0].fields["solution"] = "7";
  EXPECT_EQ(scores(*reward, r), std::vector<float>{1});
}

TEST(ExactAnswer, MissingFieldIsAClearErrorAtScore) {
  auto reward = registry().create<RewardFunction>("exact-answer", table(""));
  auto r = rows({{"= 7", "7"}, {"= 7", "<none>"}});
  try {
    reward->score(r.batch);
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("row 1's data row has no field 'answer'"), std::string::npos) << what;
    EXPECT_NE(what.find("q1"), std::string::npos) << what;
  }
  r.batch.examples[0] = nullptr;
  EXPECT_THROW(reward->score(r.batch), std::invalid_argument);
}

TEST(ExactAnswer, BadPatternIsRefusedAtItsLine) {
  const std::string what = config_error("reward", "exact-answer", "field = \"answer\"\npattern = \"(unclosed\"\n");
  EXPECT_NE(what.find("<test>:2:11: pattern: not a valid ECMAScript regular expression"), std::string::npos) << what;
}

TEST(LengthPenalty, ExactValuesFromTheAnswerMask) {
  auto reward = registry().create<RewardFunction>("length-penalty", table("max_tokens = 4\ncoefficient = 0.5\n"));
  EXPECT_TRUE(reward->required_fields().empty());
  RewardBatch batch;
  // Answer tokens 2, 4, 5, 8, 0.
  batch.answer_mask = at::tensor({1, 1, 0, 0, 0, 0, 0, 0,  //
                                  1, 1, 1, 1, 0, 0, 0, 0,  //
                                  1, 1, 1, 1, 1, 0, 0, 0,  //
                                  1, 1, 1, 1, 1, 1, 1, 1,  //
                                  0, 0, 0, 0, 0, 0, 0, 0},
                                 at::kLong)
                          .view({5, 8});
  batch.sequences = at::zeros({5, 10}, at::kLong);
  batch.prompt_length = 2;
  auto s = reward->score(batch);
  ASSERT_EQ(s.scalar_type(), at::kFloat);
  // -0.5 * max(0, n - 4) / 4
  const std::vector<float> expected{0.0f, 0.0f, -0.125f, -0.5f, 0.0f};
  ASSERT_EQ(s.numel(), 5);
  for (int64_t i = 0; i < 5; ++i) EXPECT_FLOAT_EQ(s[i].item<float>(), expected[static_cast<size_t>(i)]) << i;
  // Defaults: coefficient 1.
  auto plain = registry().create<RewardFunction>("length-penalty", table("max_tokens = 2"));
  EXPECT_FLOAT_EQ(plain->score(batch)[3].item<float>(), -3.0f);
}

TEST(LengthPenalty, OptionsAreValidated) {
  EXPECT_NE(config_error("reward", "length-penalty", "max_tokens = 0").find("<test>:1:14: max_tokens: must be >= 1"),
            std::string::npos);
  EXPECT_NE(config_error("reward", "length-penalty", "max_tokens = 8\ncoefficient = -1.0")
                .find("<test>:2:15: coefficient: must be >= 0"),
            std::string::npos);
  EXPECT_NE(config_error("reward", "length-penalty", "coefficient = 1.0").find("missing required key 'max_tokens'"),
            std::string::npos);
}

TEST(RewardModelPlugin, ReadsItsModelThroughItsOwnRole) {
  auto reward = registry().create<RewardFunction>("reward-model", table("model = \"rm\""));
  const std::map<std::string, std::string> roles = {{"reward_model", "rm"}};
  EXPECT_EQ(reward->model_roles(), roles);
  EXPECT_TRUE(reward->required_fields().empty());
  EXPECT_NE(config_error("reward", "reward-model", "").find("missing required key 'model'"), std::string::npos);
}

TEST(RewardRegistry, TheKindIsListed) {
  const auto names = registry().names(RewardFunction::kind);
  for (const char* name : {"exact-answer", "length-penalty", "reward-model"})
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
  EXPECT_EQ(host_interface_version("reward"), RewardFunction::interface_version);
  EXPECT_NE(registry().table_text().find("reward "), std::string::npos);
}

// What reward-model's prepare() reads of a stage: one role, resolved to a reward model's folder.
class OneRoleContext : public StageContext {
 public:
  OneRoleContext(std::string role, fs::path dir, std::shared_ptr<ModelFamily> family)
      : role_(std::move(role)), dir_(std::move(dir)), family_(std::move(family)) {}
  const std::string& stage_name() const override { return name_; }
  const fs::path& stage_dir() const override { return dir_; }
  uint64_t seed() const override { return 1; }
  fs::path model_dir(const std::string& role) const override {
    if (role != role_) throw std::invalid_argument("no model role '" + role + "'");
    return dir_;
  }
  ModelHandle model(const std::string& role) const override {
    ModelHandle h;
    h.dir = model_dir(role);
    h.family = family_;
    h.hf_config = read_hf_config(h.dir);
    return h;
  }
  std::shared_ptr<CausalLM> load_model(const std::string& role) const override {
    return family_->from_pretrained(model_dir(role), {});
  }
  std::shared_ptr<Tokenizer> tokenizer(const std::string& role) const override {
    return Tokenizer::from_dir(model_dir(role));
  }
  const DataSource& data() const override { throw std::logic_error("unused"); }
  MetricsSink& metrics() override { throw std::logic_error("unused"); }
  Progress& progress() override { throw std::logic_error("unused"); }
  Strategy& strategy() override {  // places the frozen reward model
    if (!strategy_) strategy_ = registry().create<Strategy>("single", table(""));
    return *strategy_;
  }
  Generator* generator() override { return nullptr; }
  const std::vector<std::shared_ptr<Hook>>& hooks() override { return hooks_; }
  const std::vector<WeightedReward>& rewards() override { return rewards_; }

 private:
  std::string role_, name_ = "test";
  fs::path dir_;
  std::shared_ptr<ModelFamily> family_;
  std::vector<std::shared_ptr<Hook>> hooks_;
  std::vector<WeightedReward> rewards_;
  std::shared_ptr<Strategy> strategy_;
};

// prepare() loads the saved reward model (base + value head) frozen; score() is end_scores of its values, as ppo
// scores its rollouts.
TEST(RewardModelPlugin, ScoresAsTheSavedRewardModelDoes) {
  const fs::path quickstart = fs::path(DSCHAT_SOURCE_DIR) / "configs" / "quickstart" / "model";
  auto family = registry().create<ModelFamily>("opt", table(""));
  at::manual_seed(5);
  auto rm = std::make_shared<RewardModel>(family->build(read_hf_config(quickstart), {}));
  {
    at::NoGradGuard no_grad;
    rm->v_head->weight.normal_();
  }
  const fs::path dir = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "rewards" / "rm";
  fs::remove_all(dir);
  auto tokenizer = Tokenizer::from_dir(quickstart);
  save_reward_model(*rm, *family, tokenizer.get(), dir, reward_conventions_json(reward_conventions(*tokenizer)));

  auto reward = registry().create<RewardFunction>("reward-model", table("model = \"rm\""));
  OneRoleContext context("reward_model", dir, family);
  RewardBatch batch;
  batch.pad_id = 1;
  batch.prompt_length = 3;
  batch.sequences = at::tensor({1, 17, 18, 30, 31, 2, 1, 1,  //
                                1, 20, 21, 40, 41, 42, 43, 44},
                               at::kLong)
                        .view({2, 8});
  EXPECT_THROW(reward->score(batch), std::logic_error);  // before prepare()
  reward->prepare(context, at::kCPU);
  auto scores = reward->score(batch);
  ASSERT_EQ(scores.scalar_type(), at::kFloat);
  ASSERT_EQ(scores.sizes(), (std::vector<int64_t>{2}));
  EXPECT_FALSE(scores.requires_grad());
  at::NoGradGuard no_grad;
  rm->eval();
  auto expected = end_scores(rm->values(batch.sequences, batch.sequences.ne(1).to(at::kLong)), batch.sequences, 1, 3);
  EXPECT_TRUE(at::allclose(scores, expected.to(at::kFloat), 1e-5, 1e-6)) << scores << expected;
}

}  // namespace
