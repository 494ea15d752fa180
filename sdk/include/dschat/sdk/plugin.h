#pragma once
// What a plugin library writes to offer its factories:
//
//   DSCHAT_PLUGIN("ema", "0.1.0", "EMA of the actor's weights") {
//     registrar.add<dschat::Hook>("ema", "exponential moving average of the actor",
//                                 [](const dschat::ConfigTable& options) { return std::make_shared<Ema>(options); });
//   }
//
// A factory reads and checks its options (through ConfigTable, so errors name file:line:col and key path) and
// does nothing expensive: the host calls it while validating the pipeline, before any work starts.
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dschat/sdk/abi.h"
#include "dschat/sdk/config.h"

namespace dschat {

struct FactoryEntry {
  std::string kind;       // "model", "strategy", "generation", "algorithm", "hook", "reward", or a test kind
  std::string name;
  int interface_version;  // the kind's interface version the plugin was compiled against
  std::string description;
  std::function<std::shared_ptr<void>(const ConfigTable&)> make;
};

// Collects a library's factories. Registration is staged: the host commits the entries only when the register
// function returns successfully, so a library that throws half way adds nothing.
class Registrar {
 public:
  template <class Interface, class Factory>
  void add(std::string name, std::string description, Factory factory) {
    entries_.push_back({Interface::kind, std::move(name), Interface::interface_version, std::move(description),
                        [factory = std::move(factory)](const ConfigTable& options) -> std::shared_ptr<void> {
                          std::shared_ptr<Interface> object = factory(options);
                          return object;
                        }});
  }
  const std::vector<FactoryEntry>& entries() const { return entries_; }

 private:
  std::vector<FactoryEntry> entries_;
};

}  // namespace dschat

// Defines the library's manifest and the body of its register function. The body sees `registrar`.
#define DSCHAT_PLUGIN(NAME, VERSION, DESCRIPTION)                                                          \
  static void dschat_register_factories_impl(::dschat::Registrar& registrar);                           \
  static int dschat_register_factories(void* registrar, char* error, size_t capacity) noexcept {        \
    try {                                                                                                \
      dschat_register_factories_impl(*static_cast<::dschat::Registrar*>(registrar));                    \
      return 0;                                                                                          \
    } catch (const std::exception& e) {                                                                  \
      std::strncpy(error, e.what(), capacity - 1);                                                       \
      error[capacity - 1] = '\0';                                                                        \
    } catch (...) {                                                                                      \
      std::strncpy(error, "unknown exception (not derived from std::exception)", capacity - 1);          \
      error[capacity - 1] = '\0';                                                                        \
    }                                                                                                    \
    return 1;                                                                                            \
  }                                                                                                      \
  extern "C" DSCHAT_EXPORT const dschat_manifest* dschat_plugin_manifest() noexcept {                   \
    static const dschat_manifest manifest{DSCHAT_ABI_MAJOR,                                              \
                                                 DSCHAT_ABI_MINOR,                                       \
                                                 ::dschat::this_build_fingerprint(),                     \
                                                 NAME,                                                   \
                                                 VERSION,                                                \
                                                 DESCRIPTION,                                            \
                                                 &dschat_register_factories};                            \
    return &manifest;                                                                                    \
  }                                                                                                      \
  static void dschat_register_factories_impl(::dschat::Registrar& registrar)
