// The registry in-process: objects outlive the registry that made them, plugin errors carry the plugin's name,
// rejected and conflicting entries are never handed out.
#include <gtest/gtest.h>

#include "dschat/framework/registry.h"
#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/strategy.h"

namespace {

std::string plugin_dir(const std::string& name) { return std::string(DSCHAT_TEST_PLUGIN_DIR) + "/" + name; }

dschat::PluginRegistry registry_with(const std::vector<std::string>& dirs) {
  dschat::PluginRegistry registry;
  std::vector<dschat::PluginSearchPath> paths;
  for (const auto& d : dirs) paths.push_back({plugin_dir(d), dschat::PluginOrigin::pipeline});
  registry.discover(paths);
  return registry;
}

std::shared_ptr<dschat::ConfigDocument> options(const std::string& toml) {
  return dschat::ConfigDocument::parse_string(toml, "<test>", ".");
}

}  // namespace

TEST(Registry, ObjectsKeepTheirLibraryAndOutliveTheRegistry) {
  std::shared_ptr<dschat::Strategy> strategy;
  {
    auto registry = registry_with({"good"});
    auto doc = options("stage = 3\noffload = \"optimizer\"\n");
    strategy = registry.create<dschat::Strategy>("test-strategy", doc->root());
  }
  // The registry (and its own handles) are gone; the object's code must still be mapped.
  EXPECT_EQ(strategy->describe(), "test stage 3 offload optimizer");
}

TEST(Registry, FactoryOptionErrorsAreConfigErrors) {
  auto registry = registry_with({"good"});
  auto doc = options("stage = 9\n");
  try {
    registry.create<dschat::Strategy>("test-strategy", doc->root());
    FAIL() << "expected a ConfigError";
  } catch (const dschat::ConfigError& e) {
    EXPECT_EQ(e.key_path(), "stage");
    EXPECT_NE(std::string(e.what()).find("must be <= 3, found 9"), std::string::npos) << e.what();
  }
}

TEST(Registry, ExceptionsFromPluginCodeNameThePlugin) {
  auto registry = registry_with({"good"});
  auto doc = options("model = \"base\"\nfail_roles = true\n");
  auto algorithm = registry.create<dschat::Algorithm>("failing", doc->root());
  const auto& entry = registry.find(dschat::Algorithm::kind, "failing");
  try {
    dschat::call_plugin(entry, [&] { return algorithm->model_roles(); });
    FAIL() << "expected a PluginError";
  } catch (const dschat::PluginError& e) {
    std::string message = e.what();
    EXPECT_EQ(message.rfind("[plugin algorithm/failing ", 0), 0u) << message;
    EXPECT_NE(message.find("libdschat-test-good.so] deliberate failure inside model_roles()"), std::string::npos) << message;
  }
}

TEST(Registry, StagedRegistrationCommitsNothingFromAFailedLibrary) {
  auto registry = registry_with({"good", "throws"});
  EXPECT_EQ(registry.names("hook"), std::vector<std::string>{"counting"});
  EXPECT_THROW(registry.find("hook", "half-registered"), dschat::PluginError);
}

TEST(Registry, ConflictsNameBothFiles) {
  auto registry = registry_with({"duplicate"});
  try {
    registry.find("hook", "dup");
    FAIL() << "expected a conflict";
  } catch (const dschat::PluginError& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("libdschat-test-dup-a.so"), std::string::npos) << message;
    EXPECT_NE(message.find("libdschat-test-dup-b.so"), std::string::npos) << message;
  }
}

TEST(Registry, UnknownNamesListWhatIsAvailableAndWhatFailedToLoad) {
  auto registry = registry_with({"good", "wrong-fingerprint"});
  try {
    registry.find("hook", "ema");
    FAIL() << "expected an error";
  } catch (const dschat::PluginError& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("no hook plugin named 'ema'; available: counting"), std::string::npos) << message;
    EXPECT_NE(message.find("libdschat-test-wrong-fingerprint.so"), std::string::npos) << message;
  }
}

TEST(Registry, WrongInterfaceVersionRefusesTheEntryNotTheLibrary) {
  auto registry = registry_with({"bad-interface"});
  EXPECT_EQ(registry.names("hook"), std::vector<std::string>{"current"});
  try {
    registry.find("hook", "future");
    FAIL() << "expected an error";
  } catch (const dschat::PluginError& e) {
    const std::string expected =
        "hook interface_version: expected " + std::to_string(dschat::Hook::interface_version) + ", found 7";
    EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
  }
}
