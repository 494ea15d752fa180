// The `dschat` command line: exit codes, validation messages (file:line:col + key path), the plugin table.
#include <filesystem>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "dschat/sdk/abi.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/hook.h"

using dschat::testing::pipeline_file;
using dschat::testing::run_dschat;
using dschat::testing::test_plugin_dir;

namespace {

const std::string kGoodPlugins = "DSCHAT_PLUGIN_PATH=" + test_plugin_dir("good");

void expect_contains(const std::string& haystack, const std::string& needle) {
  EXPECT_NE(haystack.find(needle), std::string::npos) << "expected to find: " << needle << "\nin:\n" << haystack;
}

// Validates a malformed pipeline and checks the exit code and the parts of the message.
void expect_config_error(const std::string& file, const std::vector<std::string>& parts, const std::string& extra = "") {
  auto result = run_dschat("validate " + pipeline_file(file) + " " + extra, kGoodPlugins);
  EXPECT_EQ(result.exit_code, 2) << result.output;
  for (const auto& part : parts) expect_contains(result.output, part);
}

}  // namespace

TEST(Cli, VersionPrintsLibTorchAndFingerprint) {
  auto result = run_dschat("--version");
  EXPECT_EQ(result.exit_code, 0);
  expect_contains(result.output, "LibTorch 2.11.0");
  expect_contains(result.output, "build fingerprint: torch_version=2.11.0 cxx11_abi=1");
  expect_contains(result.output, "cuda=");
}

TEST(Cli, HelpOnEveryCommand) {
  for (const std::string command : {"run", "validate", "plugins"}) {
    auto result = run_dschat(command + " --help");
    EXPECT_EQ(result.exit_code, 0) << command;
    expect_contains(result.output, "usage: dschat " + command);
  }
  EXPECT_EQ(run_dschat("--help").exit_code, 0);
}

TEST(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run_dschat("").exit_code, 2);
  auto unknown = run_dschat("frobnicate");
  EXPECT_EQ(unknown.exit_code, 2);
  expect_contains(unknown.output, "unknown command 'frobnicate'");
  auto missing = run_dschat("validate");
  EXPECT_EQ(missing.exit_code, 2);
  expect_contains(missing.output, "file");
  EXPECT_EQ(run_dschat("run " + pipeline_file("good.toml") + " --no-such-flag").exit_code, 2);
}

TEST(Cli, ValidatesAGoodPipeline) {
  auto result = run_dschat("validate " + pipeline_file("good.toml"), kGoodPlugins);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result.output, "is valid");
  expect_contains(result.output, "strategy test stage 3 offload optimizer");  // the stage override
  expect_contains(result.output, "model=first");
}

TEST(Cli, DryRunPrintsThePlanAndWritesNothing) {
  auto out = std::filesystem::temp_directory_path() / "dschat-dry-run-test";
  std::filesystem::remove_all(out);
  auto result = run_dschat("run " + pipeline_file("good.toml") + " --dry-run --set pipeline.output_dir=\\\"" +
                               out.string() + "\\\"",
                           kGoodPlugins);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result.output, "dry run");
  expect_contains(result.output, "stage 2 second");
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(Cli, FailureWhileRunningExitsOneWithThePluginNamed) {
  auto out = std::filesystem::temp_directory_path() / "dschat-run-failure-test";
  std::filesystem::remove_all(out);
  auto result = run_dschat("run " + pipeline_file("good.toml") + " --set pipeline.output_dir=\\\"" + out.string() +
                               "\\\"",
                           kGoodPlugins);
  EXPECT_EQ(result.exit_code, 1) << result.output;
  expect_contains(result.output, "[plugin algorithm/failing ");
  expect_contains(result.output, "libdschat-test-good.so] deliberate failure inside run()");
  // The run folder records what ran and with which plugins, even when a stage fails.
  EXPECT_TRUE(std::filesystem::exists(out / "pipeline.resolved.toml"));
  EXPECT_TRUE(std::filesystem::exists(out / "plugins.txt"));
  EXPECT_TRUE(std::filesystem::exists(out / "plugins.json"));
  std::filesystem::remove_all(out);
}

// ---- eight kinds of malformed pipeline, each exit 2 with file:line:col and the key path ----

TEST(CliValidate, SyntaxError) {
  expect_config_error("bad-syntax.toml", {"bad-syntax.toml:4:", "TOML syntax error"});
}

TEST(CliValidate, UnknownKeyWithSuggestion) {
  expect_config_error("bad-unknown-key.toml", {"bad-unknown-key.toml:3:8: pipeline.sede: unknown key", "did you mean 'seed'?"});
}

TEST(CliValidate, WrongType) {
  expect_config_error("bad-wrong-type.toml",
                      {"bad-wrong-type.toml:9:9: strategy.stage: expected an integer, found string \"two\""});
}

TEST(CliValidate, MissingRequiredKey) {
  expect_config_error("bad-missing-key.toml", {"bad-missing-key.toml:10:1: stage.first: missing required key 'algorithm'"});
}

TEST(CliValidate, MissingFile) {
  expect_config_error("bad-missing-file.toml",
                      {"bad-missing-file.toml:11:12: data.datasets[1]: no such file or folder:", "no-such-data.jsonl"});
}

TEST(CliValidate, UnknownPluginListsAvailable) {
  expect_config_error("bad-unknown-plugin.toml", {"bad-unknown-plugin.toml:12:13: stage.first.algorithm:",
                                                  "no algorithm plugin named 'failling'; available:", " failing,"});
}

TEST(CliValidate, UnknownModelReference) {
  expect_config_error("bad-unknown-reference.toml",
                      {"bad-unknown-reference.toml:13:9: stage.first.model:", "did you mean 'base'?"});
}

TEST(CliValidate, PluginOptionsAreCheckedTheSameWay) {
  expect_config_error("bad-hook-option.toml",
                      {"bad-hook-option.toml:14:40:", "stage.first.hooks[0].evry: unknown key", "did you mean 'every'?"});
}

TEST(CliValidate, BadSetPath) {
  expect_config_error("good.toml", {"--set stage.frist.model=base", "no [[stage]] named 'frist'", "did you mean 'first'?"},
                      "--set stage.frist.model=base");
}

TEST(CliValidate, BadSetPathThroughAValue) {
  expect_config_error("good.toml", {"pipeline.seed.x", "'pipeline.seed' is a value of type integer, not a table"},
                      "--set pipeline.seed.x=1");
}

TEST(CliValidate, BadSetValueType) {
  expect_config_error("good.toml", {"--set strategy.stage=two", "strategy.stage: expected an integer, found string \"two\""},
                      "--set strategy.stage=two");
}

TEST(CliValidate, BadSetValueSyntax) {
  expect_config_error("good.toml", {"--set data.split=[1,2", "is not a TOML value"}, "'--set' 'data.split=[1,2'");
}

TEST(CliValidate, SetUnknownKeyIsAnUnknownKey) {
  expect_config_error("good.toml", {"--set stage.first.lrr=1e-5", "stage.first.lrr: unknown key"},
                      "--set stage.first.lrr=1e-5");
}

TEST(CliValidate, SetOverridesAreApplied) {
  auto result = run_dschat("validate " + pipeline_file("good.toml") + " --set stage.second.strategy.stage=1",
                           kGoodPlugins);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result.output, "strategy test stage 1 offload optimizer");
}

// ---- the plugin table ----

TEST(CliPlugins, TableShowsEveryLibraryWithItsStatus) {
  std::string path = "DSCHAT_PLUGIN_PATH=";
  for (const std::string dir : {"good", "wrong-abi", "newer-minor", "wrong-fingerprint", "throws", "duplicate",
                                "bad-interface", "shadow"})
    path += test_plugin_dir(dir) + ":";
  auto result = run_dschat("plugins", path);
  EXPECT_EQ(result.exit_code, 0) << result.output;
  expect_contains(result.output, "hook        counting         1.2.3     ok");
  expect_contains(result.output, "libdschat-test-wrong-abi.so");
  expect_contains(result.output, fmt::format("rejected: abi_major: expected {}, found 99", DSCHAT_ABI_MAJOR));
  expect_contains(result.output, "rejected: abi_minor: expected <= 0, found 42");
  expect_contains(result.output, "rejected: build fingerprint differs: torch_version: expected 2.11.0, found 1.13.1; "
                                 "cxx11_abi: expected 1, found 0");
  expect_contains(result.output, "rejected: register function failed: cannot find my kernels");
  expect_contains(result.output, "conflict: also offered by");
  expect_contains(result.output, "rejected: hook interface_version: expected " +
                                     std::to_string(dschat::Hook::interface_version) + ", found 7");
  expect_contains(result.output, "shadowed by " + test_plugin_dir("good") + "/libdschat-test-good.so");
  EXPECT_EQ(result.output.find("half-registered"), std::string::npos) << "staged registration leaked";

  auto json = run_dschat("plugins --json", path);
  EXPECT_EQ(json.exit_code, 0);
  expect_contains(json.output, "\"found_via\": \"DSCHAT_PLUGIN_PATH\"");
  expect_contains(json.output, "\"status\": \"ok\"");
}

// A GPU asked for where there is none is refused before any work, at the key that asked for it.
TEST(CliValidate, CudaDeviceWithoutAGpuIsRefused) {
  std::string problem;
  if (dschat::built_with_cuda() && !dschat::list_accelerators(&problem).empty())
    GTEST_SKIP() << "a GPU is visible here";
  const std::string why = dschat::built_with_cuda() ? "no CUDA device is visible" : "built for the CPU only";
  for (const std::string device : {"cuda", "cuda:1"})
    expect_config_error("good.toml", {"pipeline.device", why, "device = \"cpu\""},
                        "--set pipeline.device=" + device);
  expect_config_error("good.toml", {"pipeline.device", "expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\""},
                      "--set pipeline.device=gpu");
  auto ok = run_dschat("validate " + pipeline_file("good.toml") + " --set pipeline.device=cpu", kGoodPlugins);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  expect_contains(ok.output, "device cpu");
}
