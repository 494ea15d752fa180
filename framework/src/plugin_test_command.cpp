// `dschat plugin test LIB`: the SDK's plugin harness (being written).
#include "command_support.h"

namespace dschat {

const char* const kTestSynopsis = "test LIB [--model-config CONFIG.json] [--stage STAGE.toml] [--work DIR]";

int plugin_test_command(const std::vector<std::string>&) { throw CommandError("dschat plugin test: not built yet"); }

}  // namespace dschat
