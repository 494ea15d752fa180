// Compiled twice (copy a and b): both offer hook/dup.
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

DSCHAT_PLUGIN("test-dup-" DSCHAT_TEST_COPY, "0.0.1", "registry test: duplicate (kind, name)") {
  registrar.add<dschat::Hook>("dup", "offered twice",
                              [](const dschat::ConfigTable&) { return std::make_shared<dschat::Hook>(); });
}
