// Compiled against a hook interface of another version: the entry is refused, the library is not.
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

namespace {
struct FutureHook : dschat::Hook {
  static constexpr const char* kind = "hook";
  static constexpr int interface_version = 7;
};
}  // namespace

DSCHAT_PLUGIN("test-bad-interface", "0.0.1", "registry test: hook interface version 7") {
  registrar.add<FutureHook>("future", "needs hook interface 7",
                            [](const dschat::ConfigTable&) { return std::make_shared<FutureHook>(); });
  registrar.add<dschat::Hook>("current", "fine", [](const dschat::ConfigTable&) { return std::make_shared<dschat::Hook>(); });
}
