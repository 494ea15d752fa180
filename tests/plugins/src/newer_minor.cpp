// Built against a (pretend) newer SDK of the same major: the host must refuse what it may not understand.
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

#undef DSCHAT_ABI_MINOR
#define DSCHAT_ABI_MINOR 42

DSCHAT_PLUGIN("test-newer-minor", "0.0.1", "registry test: ABI minor 42") {
  registrar.add<dschat::Hook>("newer", "never registered",
                              [](const dschat::ConfigTable&) { return std::make_shared<dschat::Hook>(); });
}
