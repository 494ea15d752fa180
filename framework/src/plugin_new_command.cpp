// `dschat plugin new --kind KIND NAME [DIR]`: writes a ready out-of-tree plugin project that builds against the
// installed SDK (find_package(dschat)) and loads as it is: CMakeLists.txt, NAME.cpp with the kind's skeleton, and
// a ctest that has the installed host load it and list it as ok.
#include <cctype>
#include <iostream>
#include <map>
#include <regex>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include "command_support.h"
#include "dschat/framework/cli.h"
#include "dschat/sdk/atomic_file.h"
#include "plugin_skeletons.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace dschat {
namespace {

constexpr const char* kSynopsis = "new --kind model|strategy|generation|algorithm|hook NAME [DIR]";

// Replaces every placeholder (plugin_skeletons.h) by its value.
std::string fill(std::string text, const std::map<std::string, std::string>& values) {
  for (const auto& [key, value] : values)
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + value.size()))
      text.replace(at, key.size(), value);
  return text;
}

std::string class_name_of(const std::string& name) {
  std::string out;
  bool upper = true;
  for (char c : name) {
    if (c == '-' || c == '_') {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return std::isdigit(static_cast<unsigned char>(out[0])) ? "Plugin" + out : out;
}

int plugin_command(const std::vector<std::string>& args) {
  if (!args.empty() && args[0] == "test") return plugin_test_command({args.begin() + 1, args.end()});
  if (args.empty() || args[0] != "new") {
    if (!args.empty() && (args[0] == "-h" || args[0] == "--help")) {
      std::cout << "usage: dschat plugin " << kSynopsis << "\n       dschat plugin " << kTestSynopsis << "\n";
      return 0;
    }
    throw CommandError(fmt::format("dschat plugin: expected the sub-command 'new' or 'test'\n"
                                   "usage: dschat plugin {}\n       dschat plugin {}", kSynopsis, kTestSynopsis));
  }
  po::options_description options("options");
  options.add_options()("kind", po::value<std::string>()->required(),
                        "model | strategy | generation | algorithm | hook")(
      "name", po::value<std::string>()->required(), "plugin name: lower-case letters, digits and '-'")(
      "dir", po::value<std::string>(), "where to write the project (default: ./NAME); must not exist or be empty");
  po::positional_options_description positional;
  positional.add("name", 1).add("dir", 1);
  // parse_flags prints "dschat plugin new" itself: the synopsis without its "new ".
  auto vm = parse_flags("plugin new", options, positional, {args.begin() + 1, args.end()},
                        std::string(kSynopsis).substr(4));
  if (!vm) return 0;
  const std::string kind = (*vm)["kind"].as<std::string>(), name = (*vm)["name"].as<std::string>();
  auto skeleton = plugin_skeletons().find(kind);
  if (skeleton == plugin_skeletons().end())
    throw CommandError(fmt::format(
        "--kind {}: the scaffold writes 'model', 'strategy', 'generation', 'algorithm' or 'hook' plugins", kind));
  if (!std::regex_match(name, std::regex("[a-z][a-z0-9-]*")))
    throw CommandError(fmt::format("NAME '{}': use lower-case letters, digits and '-', starting with a letter", name));
  const fs::path dir = vm->count("dir") ? fs::path((*vm)["dir"].as<std::string>()) : fs::path(name);
  if (fs::exists(dir) && !(fs::is_directory(dir) && fs::is_empty(dir)))
    throw CommandError(fmt::format("{}: exists and is not an empty folder; nothing was written", dir.string()));

  std::string ident = name;
  for (char& c : ident)
    if (c == '-') c = '_';
  // A model family registers under the HF model_type it handles, and those spell words with '_' (gpt_neox).
  const std::string factory_name = kind == "model" ? ident : name;
  const std::map<std::string, std::string> values{{"{{name}}", name},
                                                  {"{{kind}}", kind},
                                                  {"{{ident}}", ident},
                                                  {"{{registered}}", factory_name},
                                                  {"{{class}}", class_name_of(name)}};
  fs::create_directories(dir);
  write_file_atomic(dir / (name + ".cpp"), fill(skeleton->second, values));
  auto cmake = fill(kPluginCMakeLists, {{"{{harness}}", kind == "model" ? kModelHarnessTest : kHarnessTest}});
  write_file_atomic(dir / "CMakeLists.txt", fill(cmake, values));
  if (kind == "model") {  // a tiny model of the family, for the harness test
    fs::create_directories(dir / "tiny");
    write_file_atomic(dir / "tiny" / "config.json", fill(kTinyModelConfig, values));
  }
  std::cout << fmt::format("wrote the {} plugin '{}' in {}:\n  {}\n  {}\nbuild and test it:\n"
                           "  cmake -S {} -B {}/build -G Ninja -DCMAKE_PREFIX_PATH=<dschat's install prefix>\n"
                           "  cmake --build {}/build && ctest --test-dir {}/build\n",
                           kind, name, dir.string(), (dir / "CMakeLists.txt").string(),
                           (dir / (name + ".cpp")).string(), dir.string(), dir.string(), dir.string(),
                           dir.string());
  if (kind == "model")
    std::cout << fmt::format("config.json files with \"model_type\": \"{}\" build it\n", factory_name);
  return 0;
}

const bool registered = register_guarded_command("plugin", plugin_command);

}  // namespace
}  // namespace dschat
