#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace dschat {

// Exit codes: 0 success, 2 usage or configuration error, 1 failure while running.
int cli_main(int argc, char** argv);

// Further sub-commands (e.g. `generate`), registered by framework translation units at static-init time.
using CliCommand = std::function<int(const std::vector<std::string>& args)>;
std::map<std::string, CliCommand>& extra_commands();

}  // namespace dschat
