#include "dschat/framework/cli.h"

#include <iostream>

namespace dschat {
int cli_main(int, char**) {
  std::cerr << "dschat: not yet wired\n";
  return 2;
}
}  // namespace dschat
