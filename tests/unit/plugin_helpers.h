#pragma once
// The in-tree plugins as the host loads them, for tests that exercise plugins directly.
#include <filesystem>
#include <string>

#include "dschat/framework/registry.h"
#include "dschat/sdk/config_document.h"

namespace dschat::testing {

// Every plugin in the build's default folder, loaded once per test binary through the host's registry.
inline PluginRegistry& registry() {
  static PluginRegistry* registry = [] {
    auto* r = new PluginRegistry();  // never destroyed: tests keep plugin objects in statics
    r->discover({{std::filesystem::path(DSCHAT_BINARY_DIR) / "lib" / "dschat" / "plugins", PluginOrigin::pipeline}});
    return r;
  }();
  return *registry;
}

// Plugin options written as TOML; errors name "<test>:line:col".
inline ConfigTable table(const std::string& toml) { return ConfigDocument::parse_string(toml, "<test>", ".")->root(); }

}  // namespace dschat::testing
