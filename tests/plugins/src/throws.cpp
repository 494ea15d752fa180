// Registers one factory, then throws: staged registration must commit neither.
#include <stdexcept>

#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

DSCHAT_PLUGIN("test-throws", "0.0.1", "registry test: throws while registering") {
  registrar.add<dschat::Hook>("half-registered", "must not survive",
                              [](const dschat::ConfigTable&) { return std::make_shared<dschat::Hook>(); });
  throw std::runtime_error("cannot find my kernels");
}
