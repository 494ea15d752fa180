#pragma once

namespace dschat {
// Exit codes: 0 success, 2 usage or configuration error, 1 failure while running.
int cli_main(int argc, char** argv);
}  // namespace dschat
