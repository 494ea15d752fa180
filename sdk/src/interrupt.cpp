#include "dschat/sdk/interrupt.h"

#include <unistd.h>

#include <csignal>
#include <cstring>

#include "dschat/sdk/distributed.h"

namespace dschat {
namespace {

volatile std::sig_atomic_t received = 0;

void write_stderr(const char* text) {
  ssize_t ignored = ::write(STDERR_FILENO, text, std::strlen(text));
  (void)ignored;
}

// Async-signal-safe: a flag, a write(2), and _exit on the second signal.
void on_signal(int sig) {
  if (received != 0) {
    write_stderr("\ndschat: second signal: exiting now, without saving\n");
    ::_exit(128 + sig);
  }
  received = sig;
  write_stderr(sig == SIGINT ? "\ndschat: SIGINT received: stopping after the current step and saving a checkpoint "
                               "(press Ctrl-C again to exit at once)\n"
                             : "\ndschat: SIGTERM received: stopping after the current step and saving a checkpoint "
                               "(a second signal exits at once)\n");
}

}  // namespace

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // a collective or a write in progress continues; the loop reads the flag later
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int stop_signal() { return static_cast<int>(received); }

int stop_signal_everywhere() {
  auto& comm = world();
  if (comm.size() == 1) return stop_signal();
  return static_cast<int>(comm.max(static_cast<double>(stop_signal())));
}

std::string signal_name(int signal) {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "signal " + std::to_string(signal);
  }
}

}  // namespace dschat
