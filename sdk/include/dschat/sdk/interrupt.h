#pragma once
// A graceful stop for SIGINT / SIGTERM (Ctrl-C, Slurm preemption, `kill`): the host installs the handlers; the
// first signal only raises a flag, which training loops read at their next optimizer step, where they save a
// checkpoint and throw StopRequested; a second signal ends the process at once (exit 128 + signal).
#include <stdexcept>
#include <string>

#include "dschat/sdk/export.h"

namespace dschat {

// Host only, once: SIGINT and SIGTERM handlers as above.
DSCHAT_SDK_API void install_stop_handlers();

// The signal this process received (SIGINT, SIGTERM), or 0.
DSCHAT_SDK_API int stop_signal();

// Collective (call it at the same point on every rank): the signal any rank received, or 0, so that every rank
// stops after the same step.
DSCHAT_SDK_API int stop_signal_everywhere();

// Thrown by a loop that stopped on a signal after saving; the host exits with 128 + signal.
class DSCHAT_SDK_API StopRequested : public std::runtime_error {
 public:
  StopRequested(int signal, const std::string& what) : std::runtime_error(what), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

DSCHAT_SDK_API std::string signal_name(int signal);  // "SIGTERM"

}  // namespace dschat
