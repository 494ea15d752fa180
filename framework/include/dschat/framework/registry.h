#pragma once
// The host's plugin registry: discovers plugin libraries, checks each manifest against the host's ABI and build
// fingerprint, commits their factories keyed by (kind, name), and creates plugin objects that keep their library
// loaded for as long as they live. Libraries are never unloaded during a run.
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <c10/util/Exception.h>

#include "dschat/sdk/interrupt.h"
#include "dschat/sdk/abi.h"
#include "dschat/sdk/config.h"
#include "dschat/sdk/plugin.h"

namespace boost::dll {
class shared_library;
}

namespace dschat {

// An error raised inside a plugin, re-raised by the host with "[kind/name file]" in front.
class PluginError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Where a library was found, in discovery order.
enum class PluginOrigin { pipeline, environment, default_folder, command_line };
const char* origin_name(PluginOrigin origin);

struct PluginSearchPath {
  std::filesystem::path path;  // a folder (every lib*.so in it) or one library file
  PluginOrigin origin;
};

struct PluginLibrary {
  std::filesystem::path file;
  PluginOrigin origin;
  std::string plugin_name;     // from the manifest, when it could be read
  std::string plugin_version;
  std::string status = "ok";   // "ok", "rejected: ...", "shadowed by <file>"
  std::shared_ptr<boost::dll::shared_library> library;
  bool ok() const { return status == "ok"; }
};

struct PluginEntry {
  FactoryEntry factory;
  std::shared_ptr<PluginLibrary> library;
  std::string status = "ok";  // "ok", "rejected: ...", "conflict: also offered by <file>"
  bool ok() const { return status == "ok"; }
};

class PluginRegistry {
 public:
  // Folder where the host looks last: <executable dir>/../lib/dschat/plugins.
  static std::filesystem::path default_folder();
  // Search order: `pipeline_paths`, then DSCHAT_PLUGIN_PATH (':'-separated), then the default folder.
  static std::vector<PluginSearchPath> search_paths(const std::vector<std::filesystem::path>& pipeline_paths);

  // Loads every library found. Problems are recorded per library/entry (see table()), never thrown, so that a
  // broken library only matters if the pipeline uses something it would provide.
  void discover(const std::vector<PluginSearchPath>& paths);
  void load_library(const std::filesystem::path& file, PluginOrigin origin);

  const std::vector<std::shared_ptr<PluginLibrary>>& libraries() const { return libraries_; }
  const std::vector<PluginEntry>& entries() const { return entries_; }

  // The usable entry for (kind, name), or an error that lists what is available and what was rejected.
  const PluginEntry& find(const std::string& kind, const std::string& name) const;
  std::vector<std::string> names(const std::string& kind) const;  // usable names of a kind

  // Calls the factory with `options`; the object keeps its library loaded. Exceptions other than ConfigError
  // are re-raised as PluginError with the plugin's name and file.
  template <class Interface>
  std::shared_ptr<Interface> create(const std::string& name, const ConfigTable& options) const {
    const PluginEntry& entry = find(Interface::kind, name);
    std::shared_ptr<void> object = make(entry, options);
    return std::shared_ptr<Interface>(object, static_cast<Interface*>(object.get()));
  }

  // Loads one library file and creates the (first) entry of Interface's kind it offers: what tests and benchmarks
  // use to exercise a plugin exactly as the host loads it. Throws PluginError when the library is rejected.
  template <class Interface>
  std::shared_ptr<Interface> create_from_library(const std::filesystem::path& file, const ConfigTable& options) {
    return create<Interface>(load_single(file, Interface::kind), options);
  }

  // The table `dschat plugins` prints and `dschat run` records: one row per (kind, name), plus one per library
  // that offers nothing usable.
  std::string table_text() const;
  std::string table_json() const;

 private:
  std::shared_ptr<void> make(const PluginEntry& entry, const ConfigTable& options) const;
  std::string load_single(const std::filesystem::path& file, const std::string& kind);  // name of its entry
  std::vector<std::shared_ptr<PluginLibrary>> libraries_;
  std::vector<PluginEntry> entries_;
};

// Runs `fn`, re-raising any std::exception from plugin code with the plugin's label in front.
std::string plugin_label(const PluginEntry& entry);
template <class Fn>
auto call_plugin(const PluginEntry& entry, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const ConfigError&) {
    throw;
  } catch (const PluginError&) {
    throw;
  } catch (const StopRequested&) {  // a graceful stop is not the plugin's failure
    throw;
  } catch (const c10::Error& e) {  // TORCH_CHECK's message, without the C++ frames a user cannot act on
    throw PluginError(plugin_label(entry) + " " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw PluginError(plugin_label(entry) + " " + e.what());
  }
}

// The interface version the host implements for each kind it knows.
int host_interface_version(const std::string& kind);

}  // namespace dschat
