// Built against a (pretend) future SDK whose plugin ABI major is 99.
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

#undef DSCHAT_ABI_MAJOR
#define DSCHAT_ABI_MAJOR 99

DSCHAT_PLUGIN("test-wrong-abi", "0.0.1", "registry test: ABI major 99") {
  registrar.add<dschat::Hook>("never", "never registered",
                              [](const dschat::ConfigTable&) { return std::make_shared<dschat::Hook>(); });
}
