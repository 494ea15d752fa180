#include "dschat/framework/cli.h"

namespace dschat {

std::map<std::string, CliCommand>& extra_commands() {
  static std::map<std::string, CliCommand> commands;
  return commands;
}

}  // namespace dschat
