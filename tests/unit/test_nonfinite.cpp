// Non-finite values never reach a saved model: NaN/inf options are refused by validation, a step with NaN or inf
// gradients is skipped (weights untouched) and counted, `max_nonfinite_steps` in a row stop the stage with a clear
// error and nothing marked complete, and model exports and engine checkpoints refuse non-finite tensors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/ones.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "dschat/sdk/safetensors.h"
#include "dschat/sdk/train_loop.h"

namespace fs = std::filesystem;
using dschat::testing::run_dschat;

namespace {

const fs::path kOut = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "nonfinite";

fs::path write_sft_pipeline(const std::string& name, const std::string& learning_rate) {
  fs::create_directories(kOut);
  const fs::path file = kOut / (name + ".toml");
  std::ofstream(file) << fmt::format(R"([pipeline]
name = "{0}"
output_dir = "{1}"

[models.actor]
path = "{2}/configs/quickstart/model"
init = "random"

[data]
datasets = ["{2}/configs/quickstart/data/requests.jsonl"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
max_steps = 20
per_device_train_batch_size = 8
learning_rate = {3}
num_warmup_steps = 0
lr_scheduler = "constant"
checkpoint_interval = 1
max_nonfinite_steps = 2
)",
                                     name, (kOut / name).string(), DSCHAT_SOURCE_DIR, learning_rate);
  fs::remove_all(kOut / name);
  return file;
}

TEST(NonFinite, NanAndInfOptionsAreRefusedWhereTheyAreWritten) {
  for (const char* value : {"nan", "inf", "-inf"}) {
    auto file = write_sft_pipeline("refused", value);
    auto result = run_dschat("validate " + file.string());
    EXPECT_EQ(result.exit_code, 2) << value << ": " << result.output;
    EXPECT_NE(result.output.find(file.string() + ":20:"), std::string::npos) << result.output;
    EXPECT_NE(result.output.find("stage.sft.learning_rate: must be a finite number"), std::string::npos) << result.output;
  }
  auto file = write_sft_pipeline("refused-set", "1e-3");
  auto result = run_dschat("validate " + file.string() + " --set stage.sft.learning_rate=nan");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_NE(result.output.find("must be a finite number, found nan"), std::string::npos) << result.output;
}

TEST(NonFinite, GuardCountsSkippedStepsAndStopsAtTheLimit) {
  dschat::NonFiniteGuard guard("sft", 3);
  dschat::StepResult good, bad, between;
  good.boundary = bad.boundary = true;
  good.applied = true;
  bad.nonfinite = true;
  EXPECT_FALSE(guard.skipped(between, 0));  // not a boundary: nothing to judge
  EXPECT_TRUE(guard.skipped(bad, 4));
  EXPECT_TRUE(guard.skipped(bad, 4));
  EXPECT_FALSE(guard.skipped(good, 4));  // a good step resets the run of bad ones
  EXPECT_TRUE(guard.skipped(bad, 5));
  EXPECT_TRUE(guard.skipped(bad, 5));
  try {
    guard.skipped(bad, 5);
    FAIL() << "the third non-finite step in a row did not stop the stage";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("3 optimizer steps in a row had NaN or inf gradients"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(guard.total(), 5);
}

TEST(NonFinite, ModelWritersRefuseNonFiniteTensors) {
  fs::create_directories(kOut);
  auto weights = at::ones({4, 4});
  weights[1][2] = std::numeric_limits<float>::quiet_NaN();
  try {
    dschat::safetensors::require_finite(kOut / "nan", {{"ok", at::ones({2})}, {"w", weights}});
    FAIL() << "a NaN weight passed";
  } catch (const dschat::safetensors::SafetensorsError& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'w' holds NaN or inf values"), std::string::npos) << e.what();
  }
  EXPECT_THROW(dschat::safetensors::require_finite(kOut / "inf", {{"w", at::full({3}, INFINITY, at::kBFloat16)}}),
               dschat::safetensors::SafetensorsError);
  dschat::safetensors::require_finite(kOut / "ok", {{"w", at::ones({3})}, {"ids", at::arange(3)}});  // finite: fine
}

// A learning rate far too large (finite, so validation lets it through) blows the model up within a step or two;
// the following steps have NaN gradients, are skipped, and the stage stops after two in a row. No final model,
// no COMPLETE marker, and every checkpoint on disk holds finite weights.
TEST(NonFinite, ADivergedStageStopsWithoutSavingAModel) {
  auto file = write_sft_pipeline("diverged", "1e25");
  auto result = run_dschat("run " + file.string());
  EXPECT_EQ(result.exit_code, 1) << result.output;
  EXPECT_NE(result.output.find("skipped: NaN or inf gradients (1 in a row, the stage stops at 2)"), std::string::npos)
      << result.output;
  EXPECT_NE(result.output.find("error: stage sft failed"), std::string::npos) << result.output;
  EXPECT_NE(result.output.find("optimizer steps in a row had NaN or inf gradients"), std::string::npos) << result.output;
  const fs::path stage = kOut / "diverged" / "sft";
  EXPECT_FALSE(fs::exists(stage / "final" / "COMPLETE"));
  EXPECT_FALSE(fs::exists(stage / "final" / "model.safetensors"));
  if (fs::exists(stage / "checkpoints"))
    for (const auto& checkpoint : fs::directory_iterator(stage / "checkpoints")) {
      auto weights = dschat::safetensors::CheckpointReader::open(checkpoint.path() / "model.safetensors");
      for (const auto& name : weights.names())
        EXPECT_TRUE(at::isfinite(weights.load(name)).all().item<bool>()) << checkpoint.path() << " " << name;
    }
}

}  // namespace
