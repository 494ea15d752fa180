#pragma once
// Runs the real `dschat` executable the way a user does and captures what it prints.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace dschat::testing {

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};

inline CommandResult run_command(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  std::array<char, 4096> buffer{};
  size_t n;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) result.output.append(buffer.data(), n);
  int status = ::pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// `env` is a prefix like "DSCHAT_PLUGIN_PATH=/x"; `args` are passed through a shell, so quote as needed.
inline CommandResult run_dschat(const std::string& args, const std::string& env = "") {
  return run_command(env + (env.empty() ? "" : " ") + DSCHAT_EXE + " " + args);
}

inline std::string test_plugin_dir(const std::string& name) { return std::string(DSCHAT_TEST_PLUGIN_DIR) + "/" + name; }
inline std::string pipeline_file(const std::string& name) {
  return std::string(DSCHAT_SOURCE_DIR) + "/tests/data/pipelines/" + name;
}

}  // namespace dschat::testing
