#include "dschat/framework/registry.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <set>
#include <sstream>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/reward.h"
#include "dschat/sdk/strategy.h"

namespace dschat {

const char* origin_name(PluginOrigin origin) {
  switch (origin) {
    case PluginOrigin::pipeline: return "pipeline [plugins].paths";
    case PluginOrigin::environment: return "DSCHAT_PLUGIN_PATH";
    case PluginOrigin::default_folder: return "default folder";
    case PluginOrigin::command_line: return "--path";
  }
  return "?";
}

int host_interface_version(const std::string& kind) {
  static const std::map<std::string, int> versions = {
      {ModelFamily::kind, ModelFamily::interface_version}, {Strategy::kind, Strategy::interface_version},
      {Generator::kind, Generator::interface_version},     {Algorithm::kind, Algorithm::interface_version},
      {Hook::kind, Hook::interface_version},               {RewardFunction::kind, RewardFunction::interface_version},
  };
  auto it = versions.find(kind);
  return it == versions.end() ? -1 : it->second;
}

std::filesystem::path PluginRegistry::default_folder() {
  std::filesystem::path exe = boost::dll::program_location();
  return (exe.parent_path() / ".." / "lib" / "dschat" / "plugins").lexically_normal();
}

std::vector<PluginSearchPath> PluginRegistry::search_paths(const std::vector<std::filesystem::path>& pipeline_paths) {
  std::vector<PluginSearchPath> out;
  for (const auto& p : pipeline_paths) out.push_back({p, PluginOrigin::pipeline});
  if (const char* env = std::getenv("DSCHAT_PLUGIN_PATH")) {
    std::stringstream ss(env);
    std::string item;
    while (std::getline(ss, item, ':'))
      if (!item.empty()) out.push_back({item, PluginOrigin::environment});
  }
  out.push_back({default_folder(), PluginOrigin::default_folder});
  return out;
}

namespace {
bool is_plugin_file(const std::filesystem::path& p) {
  auto name = p.filename().string();
  return name.rfind("lib", 0) == 0 && p.extension() == ".so";
}

// Code that another user could have replaced is not run, as ssh refuses such keys: the library must be owned by
// you or root and not writable by group or others, and so must the folder holding it (a sticky folder such as
// /tmp is fine for the folder: others cannot replace a file they do not own there). Empty when it is safe.
std::string insecurity(const std::filesystem::path& file) {
  auto check = [](const std::filesystem::path& p, bool folder) -> std::string {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return "";
    const char* what = folder ? "its folder " : "";
    if (st.st_uid != ::geteuid() && st.st_uid != 0)
      return fmt::format("{}{} is owned by uid {}, not by you (uid {}) or root", what, p.string(), st.st_uid,
                         ::geteuid());
    const bool sticky_folder = folder && (st.st_mode & S_ISVTX);
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !sticky_folder)
      return fmt::format("{}{} is writable by {} (mode {:04o})", what, p.string(),
                         (st.st_mode & S_IWOTH) ? "every user" : "its group", st.st_mode & 07777);
    return "";
  };
  if (auto reason = check(file, false); !reason.empty()) return reason;
  return check(file.parent_path(), true);
}

bool insecure_plugins_allowed() {
  const char* v = std::getenv("DSCHAT_ALLOW_INSECURE_PLUGINS");
  return v != nullptr && std::string(v) == "1";
}

// Boost.DLL wraps dlerror's text ("boost::dll::shared_library::load() failed (dlerror system message: X): Bad
// file descriptor") and appends the errno left over from dlopen, which says nothing about the library: keep X.
std::string load_error(std::string raw) {
  const std::string marker = "dlerror system message: ";
  const size_t start = raw.find(marker), end = raw.rfind(')');
  if (start != std::string::npos && end != std::string::npos && end > start)
    return raw.substr(start + marker.size(), end - start - marker.size());
  for (const char* tail : {": Bad file descriptor", ": Success"})
    if (raw.size() > std::strlen(tail) && raw.compare(raw.size() - std::strlen(tail), std::string::npos, tail) == 0)
      raw.erase(raw.size() - std::strlen(tail));
  return raw;
}

// Field-by-field comparison with the host's own fingerprint; empty when they agree.
std::vector<std::string> fingerprint_mismatches(const dschat_build_fingerprint& found) {
  const dschat_build_fingerprint host = this_build_fingerprint();
  std::vector<std::string> out;
  auto str = [](const char* s) { return std::string(s ? s : "(null)"); };
  if (str(found.torch_version) != host.torch_version)
    out.push_back(fmt::format("torch_version: expected {}, found {}", host.torch_version, str(found.torch_version)));
  if (found.cxx11_abi != host.cxx11_abi)
    out.push_back(fmt::format("cxx11_abi: expected {}, found {}", host.cxx11_abi, found.cxx11_abi));
  if (str(found.compiler) != host.compiler)
    out.push_back(fmt::format("compiler: expected {}, found {}", host.compiler, str(found.compiler)));
  if (found.libstdcxx_release != host.libstdcxx_release)
    out.push_back(fmt::format("libstdcxx_release: expected {}, found {}", host.libstdcxx_release,
                              found.libstdcxx_release));
  if (str(found.cuda) != host.cuda)
    out.push_back(fmt::format("cuda: expected {}, found {}", host.cuda, str(found.cuda)));
  if (str(found.sdk_headers) != host.sdk_headers)
    out.push_back(fmt::format("sdk_headers: expected {}, found {} (built against other SDK headers: rebuild the "
                              "plugin against this dschat's SDK)",
                              host.sdk_headers, str(found.sdk_headers)));
  return out;
}
}  // namespace

void PluginRegistry::discover(const std::vector<PluginSearchPath>& paths) {
  for (const auto& search : paths) {
    std::error_code ec;
    if (std::filesystem::is_regular_file(search.path, ec)) {
      load_library(search.path, search.origin);
      continue;
    }
    if (!std::filesystem::is_directory(search.path, ec)) continue;  // a missing folder is not an error
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(search.path, ec))
      if (is_plugin_file(e.path())) files.push_back(e.path());
    std::sort(files.begin(), files.end());  // deterministic order, whatever the file system's
    for (const auto& f : files) {
      if (std::filesystem::is_regular_file(f, ec)) {
        load_library(f, search.origin);
        continue;
      }
      auto record = std::make_shared<PluginLibrary>();  // named like a plugin but not a file: say so, not skip it
      record->file = std::filesystem::absolute(f).lexically_normal();
      record->origin = search.origin;
      record->status = "rejected: named like a plugin library but not a regular file (a folder?)";
      libraries_.push_back(record);
    }
  }
}

void PluginRegistry::load_library(const std::filesystem::path& file, PluginOrigin origin) {
  auto record = std::make_shared<PluginLibrary>();
  record->file = std::filesystem::absolute(file).lexically_normal();
  record->origin = origin;
  libraries_.push_back(record);

  // The same library name earlier in the search order wins: later copies are shadowed and never loaded.
  for (const auto& other : libraries_) {
    if (other == record) break;
    if (other->file.filename() == record->file.filename()) {
      record->status = fmt::format("shadowed by {}", other->file.string());
      return;
    }
  }

  if (std::string reason = insecurity(record->file); !reason.empty()) {
    if (!insecure_plugins_allowed()) {
      record->status = fmt::format("refused: insecure: {}; fix the permissions (chmod go-w), or pass "
                                   "--allow-insecure-plugins to load it anyway", reason);
      return;
    }
    std::cerr << fmt::format("warning: loading {} although {} (--allow-insecure-plugins)\n", record->file.string(),
                             reason);
  }

  try {
    namespace dll = boost::dll;
    record->library = std::make_shared<dll::shared_library>(
        record->file, dll::load_mode::rtld_now | dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    std::string raw = e.what();
    record->status = raw.find("undefined symbol") != std::string::npos
                         ? fmt::format("rejected: unresolved symbol on load, probably ABI drift (a library built "
                                       "against another LibTorch/SDK); loader said: {}",
                                       raw)
                         : fmt::format("rejected: cannot load: {}", load_error(raw));
    return;
  }
  if (!record->library->has(DSCHAT_MANIFEST_SYMBOL)) {
    record->status = fmt::format("rejected: not a dschat plugin (no {} symbol)", DSCHAT_MANIFEST_SYMBOL);
    return;
  }
  const dschat_manifest* manifest =
      record->library->get<const dschat_manifest*()>(DSCHAT_MANIFEST_SYMBOL)();
  if (manifest == nullptr) {
    record->status = "rejected: manifest function returned null";
    return;
  }
  // abi_major first: it decides whether the rest of the struct may be read at all.
  if (manifest->abi_major != DSCHAT_ABI_MAJOR) {
    record->status = fmt::format("rejected: abi_major: expected {}, found {}", DSCHAT_ABI_MAJOR, manifest->abi_major);
    return;
  }
  record->plugin_name = manifest->plugin_name ? manifest->plugin_name : "";
  record->plugin_version = manifest->plugin_version ? manifest->plugin_version : "";
  if (manifest->abi_minor > DSCHAT_ABI_MINOR) {
    record->status = fmt::format("rejected: abi_minor: expected <= {}, found {} (plugin is newer than the host)",
                                 DSCHAT_ABI_MINOR, manifest->abi_minor);
    return;
  }
  if (auto mismatches = fingerprint_mismatches(manifest->fingerprint); !mismatches.empty()) {
    record->status = fmt::format("rejected: build fingerprint differs: {}", fmt::join(mismatches, "; "));
    return;
  }

  // Staged registration: nothing is committed unless the register function succeeds.
  Registrar staged;
  char error[2048] = {0};
  if (manifest->register_factories(&staged, error, sizeof(error)) != 0) {
    record->status = fmt::format("rejected: register function failed: {}", error);
    return;
  }
  for (const auto& factory : staged.entries()) {
    PluginEntry entry{factory, record, "ok"};
    int host_version = host_interface_version(factory.kind);
    if (host_version < 0) {
      entry.status = fmt::format("rejected: unknown kind '{}'", factory.kind);
    } else if (host_version != factory.interface_version) {
      entry.status = fmt::format("rejected: {} interface_version: expected {}, found {}", factory.kind, host_version,
                                 factory.interface_version);
    } else {
      for (auto& other : entries_) {
        if (other.factory.kind == factory.kind && other.factory.name == factory.name) {
          entry.status = fmt::format("conflict: also offered by {}", other.library->file.string());
          if (other.ok() || other.status.rfind("conflict", 0) == 0)
            other.status = fmt::format("conflict: also offered by {}", record->file.string());
        }
      }
    }
    entries_.push_back(std::move(entry));
  }
}

std::string PluginRegistry::load_single(const std::filesystem::path& file, const std::string& kind) {
  load_library(file, PluginOrigin::command_line);
  const auto& library = libraries_.back();
  if (!library->ok()) throw PluginError(fmt::format("{}: {}", library->file.string(), library->status));
  for (const auto& e : entries_)
    if (e.library == library && e.factory.kind == kind) return e.factory.name;
  throw PluginError(fmt::format("{} offers no {} plugin", library->file.string(), kind));
}

std::vector<std::string> PluginRegistry::names(const std::string& kind) const {
  std::vector<std::string> out;
  for (const auto& e : entries_)
    if (e.factory.kind == kind && e.ok()) out.push_back(e.factory.name);
  std::sort(out.begin(), out.end());
  return out;
}

const PluginEntry& PluginRegistry::find(const std::string& kind, const std::string& name) const {
  const PluginEntry* found = nullptr;
  std::vector<std::string> conflicts;
  for (const auto& e : entries_) {
    if (e.factory.kind != kind || e.factory.name != name) continue;
    if (e.ok()) found = &e;
    else if (e.status.rfind("conflict", 0) == 0) conflicts.push_back(e.library->file.string());
    else throw PluginError(fmt::format("{} plugin '{}' in {} is unusable: {}", kind, name, e.library->file.string(),
                                       e.status));
  }
  if (!conflicts.empty())
    throw PluginError(fmt::format("{} plugin '{}' is offered by more than one library: {}", kind, name,
                                  fmt::join(conflicts, " and ")));
  if (found) return *found;
  std::string message = fmt::format("no {} plugin named '{}'; available: {}", kind, name,
                                    names(kind).empty() ? "(none)" : fmt::format("{}", fmt::join(names(kind), ", ")));
  std::vector<std::string> rejected;
  for (const auto& lib : libraries_)
    if (!lib->ok() && lib->status.rfind("shadowed", 0) != 0)
      rejected.push_back(fmt::format("{} ({})", lib->file.string(), lib->status));
  if (!rejected.empty())
    message += fmt::format("; libraries that failed to load and might provide it: {}", fmt::join(rejected, "; "));
  throw PluginError(message);
}

std::string plugin_label(const PluginEntry& entry) {
  return fmt::format("[plugin {}/{} {}]", entry.factory.kind, entry.factory.name, entry.library->file.string());
}

namespace {
// Holds the object and then its library: members are destroyed in reverse order, so the object goes first.
struct KeepAlive {
  std::shared_ptr<boost::dll::shared_library> library;
  std::shared_ptr<void> object;
};
}  // namespace

std::shared_ptr<void> PluginRegistry::make(const PluginEntry& entry, const ConfigTable& options) const {
  std::shared_ptr<void> object = call_plugin(entry, [&] { return entry.factory.make(options); });
  if (!object) throw PluginError(plugin_label(entry) + " factory returned no object");
  auto holder = std::make_shared<KeepAlive>(KeepAlive{entry.library->library, object});
  return std::shared_ptr<void>(holder, object.get());
}

std::string PluginRegistry::table_text() const {
  std::string out = fmt::format("{:<11} {:<16} {:<9} {:<10} {}\n", "KIND", "NAME", "VERSION", "STATUS", "FILE (found via)");
  std::set<const PluginLibrary*> listed;
  for (const auto& e : entries_) {
    listed.insert(e.library.get());
    out += fmt::format("{:<11} {:<16} {:<9} {:<10} {} ({})\n", e.factory.kind, e.factory.name,
                       e.library->plugin_version, e.ok() ? "ok" : e.status.substr(0, e.status.find(':')),
                       e.library->file.string(), origin_name(e.library->origin));
    if (!e.ok()) out += fmt::format("    {}\n", e.status);
  }
  for (const auto& lib : libraries_) {
    if (listed.count(lib.get())) continue;
    std::string short_status = lib->ok() ? "empty" : lib->status.substr(0, lib->status.find_first_of(": "));
    out += fmt::format("{:<11} {:<16} {:<9} {:<10} {} ({})\n", "-", lib->plugin_name.empty() ? "-" : lib->plugin_name,
                       lib->plugin_version.empty() ? "-" : lib->plugin_version, short_status, lib->file.string(),
                       origin_name(lib->origin));
    if (!lib->ok()) out += fmt::format("    {}\n", lib->status);
  }
  return out;
}

std::string PluginRegistry::table_json() const {
  nlohmann::json rows = nlohmann::json::array();
  std::set<const PluginLibrary*> listed;
  for (const auto& e : entries_) {
    listed.insert(e.library.get());
    rows.push_back({{"kind", e.factory.kind},
                    {"name", e.factory.name},
                    {"description", e.factory.description},
                    {"interface_version", e.factory.interface_version},
                    {"plugin", e.library->plugin_name},
                    {"version", e.library->plugin_version},
                    {"file", e.library->file.string()},
                    {"found_via", origin_name(e.library->origin)},
                    {"status", e.ok() ? std::string("ok") : e.status}});
  }
  for (const auto& lib : libraries_) {
    if (listed.count(lib.get())) continue;
    rows.push_back({{"kind", nullptr},
                    {"name", nullptr},
                    {"plugin", lib->plugin_name},
                    {"version", lib->plugin_version},
                    {"file", lib->file.string()},
                    {"found_via", origin_name(lib->origin)},
                    {"status", lib->ok() ? std::string("ok (offers nothing)") : lib->status}});
  }
  return rows.dump(2);
}

}  // namespace dschat
