// Plugin files as a hostile or careless environment leaves them: a library (or its folder) that other users can
// write is refused unless --allow-insecure-plugins, as ssh refuses such keys; so is one owned by another user; a
// folder named like a plugin is reported, not skipped; a file that is not a library gets the loader's own reason.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "cli_helpers.h"

namespace fs = std::filesystem;
using dschat::testing::run_dschat;
using dschat::testing::test_plugin_dir;

namespace {

const fs::path kOut = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "plugin-security";

// A private folder holding a copy of the `good` test plugin.
fs::path plugin_copy(const std::string& name) {
  const fs::path dir = kOut / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  ::chmod(dir.c_str(), 0755);
  for (const auto& entry : fs::directory_iterator(test_plugin_dir("good")))
    if (entry.path().extension() == ".so") fs::copy_file(entry.path(), dir / entry.path().filename());
  for (const auto& entry : fs::directory_iterator(dir)) ::chmod(entry.path().c_str(), 0755);
  return dir;
}

std::string library_in(const fs::path& dir) {
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().extension() == ".so") return entry.path().string();
  return "";
}

TEST(PluginSecurity, WritableByOthersIsRefusedUnlessAllowed) {
  const fs::path dir = plugin_copy("world-writable");
  const std::string lib = library_in(dir);
  auto safe = run_dschat("plugins --path " + dir.string());
  EXPECT_EQ(safe.output.find("refused"), std::string::npos) << safe.output;

  ::chmod(lib.c_str(), 0777);
  auto refused = run_dschat("plugins --path " + dir.string());
  EXPECT_NE(refused.output.find(fmt::format("refused: insecure: {} is writable by every user (mode 0777)", lib)),
            std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("--allow-insecure-plugins"), std::string::npos) << refused.output;

  auto allowed = run_dschat("plugins --allow-insecure-plugins --path " + dir.string());
  EXPECT_EQ(allowed.output.find("refused"), std::string::npos) << allowed.output;
  EXPECT_NE(allowed.output.find("warning: loading " + lib), std::string::npos) << allowed.output;

  ::chmod(lib.c_str(), 0775);
  auto group = run_dschat("plugins --path " + dir.string());
  EXPECT_NE(group.output.find("is writable by its group (mode 0775)"), std::string::npos) << group.output;
}

TEST(PluginSecurity, AFolderOthersCanWriteIsRefusedButAStickyOneIsNot) {
  const fs::path dir = plugin_copy("open-folder");
  ::chmod(dir.c_str(), 0777);
  auto refused = run_dschat("plugins --path " + dir.string());
  EXPECT_NE(refused.output.find(fmt::format("its folder {} is writable by every user (mode 0777)", dir.string())),
            std::string::npos) << refused.output;
  ::chmod(dir.c_str(), 01777);  // like /tmp: others cannot replace a file they do not own
  auto sticky = run_dschat("plugins --path " + dir.string());
  EXPECT_EQ(sticky.output.find("refused"), std::string::npos) << sticky.output;
}

TEST(PluginSecurity, OwnedByAnotherUserIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give a file to another user";
  const fs::path dir = plugin_copy("foreign");
  const std::string lib = library_in(dir);
  ASSERT_EQ(::chown(lib.c_str(), 4321, 4321), 0);
  auto refused = run_dschat("plugins --path " + dir.string());
  EXPECT_NE(refused.output.find(fmt::format("{} is owned by uid 4321, not by you (uid 0) or root", lib)),
            std::string::npos) << refused.output;
}

TEST(PluginSecurity, LookalikesAreReportedWithTheirReason) {
  const fs::path dir = kOut / "lookalikes";
  fs::remove_all(dir);
  fs::create_directories(dir / "libdschat-folder.so");
  std::ofstream(dir / "libdschat-text.so") << std::string(512, 'x');  // long enough to be read as a header
  ::chmod(dir.c_str(), 0755);
  ::chmod((dir / "libdschat-text.so").c_str(), 0644);
  auto listed = run_dschat("plugins --path " + dir.string());
  EXPECT_NE(listed.output.find("named like a plugin library but not a regular file"), std::string::npos)
      << listed.output;
  EXPECT_NE(listed.output.find(fmt::format("rejected: cannot load: {}: invalid ELF header",
                                           (dir / "libdschat-text.so").string())),
            std::string::npos) << listed.output;
  EXPECT_NE(listed.output.find("invalid ELF header"), std::string::npos) << listed.output;
  EXPECT_EQ(listed.output.find("Bad file descriptor"), std::string::npos) << listed.output;
}

}  // namespace
