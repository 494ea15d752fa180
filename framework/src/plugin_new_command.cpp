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

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace dschat {
namespace {

constexpr const char* kSynopsis = "new --kind hook|algorithm NAME [DIR]";

// {{name}} (the plugin and registered name), {{class}} (a C++ class name), {{kind}}, {{ident}} (C identifier).
std::string fill(std::string text, const std::map<std::string, std::string>& values) {
  for (const auto& [key, value] : values)
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + value.size()))
      text.replace(at, key.size(), value);
  return text;
}

const char* kCMakeLists = R"SKELETON(# The dschat {{kind}} plugin "{{name}}", built against the installed SDK:
#   cmake -S . -B build -G Ninja -DCMAKE_PREFIX_PATH=<dschat's install prefix>
#   cmake --build build && ctest --test-dir build
#   dschat plugins --path build/libdschat-{{name}}.so     (or DSCHAT_PLUGIN_PATH=build, or [plugins].paths)
cmake_minimum_required(VERSION 3.25)
project({{ident}}_plugin LANGUAGES CXX)
set(CMAKE_CXX_STANDARD 20)
find_package(dschat REQUIRED)
dschat_add_plugin({{name}} SOURCES {{name}}.cpp)

enable_testing()
# The installed host loads the library and lists it as ok: ABI, build fingerprint (toolchain and SDK headers)
# and the kind's interface version all agree.
add_test(NAME {{ident}}_loads COMMAND ${DSCHAT_EXECUTABLE} plugins --path $<TARGET_FILE:dschat_plugin_{{name}}>)
set_tests_properties({{ident}}_loads PROPERTIES PASS_REGULAR_EXPRESSION "{{kind}} +{{name}} +0\\.1\\.0 +ok")
)SKELETON";

const char* kHook = R"SKELETON(// Hook "{{name}}": called by the training stages (sft, reward, ppo, ...) around their optimizer steps; see
// dschat/sdk/hook.h for when each method runs. Use it in a stage: hooks = [{ plugin = "{{name}}", every = 100 }].
#include <iostream>

#include "dschat/sdk/config.h"
#include "dschat/sdk/hook.h"
#include "dschat/sdk/plugin.h"

namespace {

class {{class}} : public dschat::Hook {
 public:
  // Options are read here, at validate time: a wrong type or value is reported with its file:line.
  explicit {{class}}(const dschat::ConfigTable& options) : every_(options.get_int("every", 100, 1)) {}

  void after_optimizer_step(torch::nn::Module& /*model*/, const dschat::HookStepInfo& info) override {
    if (info.step % every_ == 0) std::cout << "{{name}}: optimizer step " << info.step << "\n";
  }

 private:
  int64_t every_;
};

}  // namespace

DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a hook") {
  registrar.add<dschat::Hook>("{{name}}", "prints every `every`-th optimizer step",
                              [](const dschat::ConfigTable& o) { return std::make_shared<{{class}}>(o); });
}
)SKELETON";

const char* kAlgorithm = R"SKELETON(// Algorithm "{{name}}": a training stage. As written it fine-tunes the stage's `model` with the causal-LM loss on
// the SFT share of [data] (what DeepSpeed-Chat's step 1 does) through the SDK's parts: the stage's strategy makes
// the engine, run_train_loop does epochs, accumulation, evaluation, checkpoints and resume, and the final model is
// written as an HF folder. Change the loss and the data it reads; see dschat/sdk/algorithm.h for the lifecycle.
// Use it in a pipeline: [[stage]] algorithm = "{{name}}", model = "...".
#include <ATen/ops/cross_entropy_loss.h>
#include <c10/core/GradMode.h>

#include <stdexcept>

#include "dschat/sdk/algorithm.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/metrics.h"
#include "dschat/sdk/optim.h"
#include "dschat/sdk/plugin.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tokenizer.h"
#include "dschat/sdk/train_loop.h"

namespace {

using namespace dschat;

class {{class}} : public Algorithm {
 public:
  // The shared training keys (learning_rate, epochs, per_device_train_batch_size, ...), checked at validate time.
  explicit {{class}}(const ConfigTable& options) : options_(read_train_options(options, {1e-5, 0.0})) {}

  DataNeeds data_needs() const override { return {Phase::sft, false}; }
  std::map<std::string, std::string> model_roles() const override {
    return {{"model", options_.model_role_reference}};
  }

  void run(StageContext& context) override {
    auto handle = context.model("model");
    auto tokenizer = context.tokenizer("model");
    auto lm = context.load_model("model");
    const auto& train = context.data().tokenized(Phase::sft, false, *tokenizer);
    const auto& eval = context.data().tokenized(Phase::sft, true, *tokenizer);
    const int64_t max_seq_len = context.data().limits().max_seq_len;
    auto pad = tokenizer->eos_id() ? tokenizer->eos_id() : tokenizer->pad_id();
    if (!pad) throw std::invalid_argument("the tokenizer has neither a pad nor an eos token");

    OptimizerOptions optimizer = options_.optimizer;
    optimizer.total_steps = total_optimizer_steps(options_, static_cast<int64_t>(train.size()));
    auto engine = context.strategy().make_engine(lm, lm, optimizer);

    auto loss_on = [&](const std::vector<TokenizedExample>& set, const std::vector<int64_t>& indices) {
      std::vector<const TokenizedExample*> rows;
      for (auto i : indices) rows.push_back(&set[static_cast<size_t>(i)]);
      SftBatch batch = collate_sft(rows, max_seq_len, *pad);
      trim_right_padding(batch.attention_mask, {&batch.input_ids, &batch.labels});
      auto logits = engine->forward(batch.input_ids, batch.attention_mask).logits;
      const int64_t V = logits.size(-1);
      auto loss = at::cross_entropy_loss(logits.slice(1, 0, -1).to(at::kFloat).reshape({-1, V}),
                                         batch.labels.slice(1, 1).to(logits.device()).reshape({-1}), {},
                                         at::Reduction::Mean, -100);
      return std::make_pair(loss, batch.attention_mask.sum().item<int64_t>());
    };
    TrainLoopCallbacks callbacks;
    callbacks.micro_batch = [&](const std::vector<int64_t>& indices) -> std::pair<double, int64_t> {
      auto [loss, tokens] = loss_on(train, indices);
      engine->backward(loss);
      return {loss.item<double>(), tokens};
    };
    callbacks.evaluate = [&](int64_t step) {
      if (eval.empty()) return;
      engine->train(false);
      at::NoGradGuard no_grad;
      std::vector<int64_t> indices;
      for (int64_t i = 0; i < std::min<int64_t>(options_.per_device_eval_batch_size, eval.size()); ++i)
        indices.push_back(i);
      context.metrics().scalar("eval/loss", loss_on(eval, indices).first.item<double>(), step);
      engine->train(true);
    };
    run_train_loop(context, *engine, options_, static_cast<int64_t>(train.size()), callbacks);

    auto whole = engine->gather_parameters();  // ZeRO-3: every weight back on every rank for the export
    if (world().is_main()) {
      handle.family->export_hf(*lm, context.stage_dir() / "final");
      tokenizer->save(context.stage_dir() / "final");
    }
  }

 private:
  TrainOptions options_;
};

}  // namespace

DSCHAT_PLUGIN("{{name}}", "0.1.0", "{{name}}: a training stage") {
  registrar.add<dschat::Algorithm>("{{name}}", "causal-LM fine-tuning (a starting point)",
                                   [](const dschat::ConfigTable& o) { return std::make_shared<{{class}}>(o); });
}
)SKELETON";

const std::map<std::string, const char*>& skeletons() {
  static const std::map<std::string, const char*> by_kind{{"hook", kHook}, {"algorithm", kAlgorithm}};
  return by_kind;
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
  options.add_options()("kind", po::value<std::string>()->required(), "hook | algorithm")(
      "name", po::value<std::string>()->required(), "plugin name: lower-case letters, digits and '-'")(
      "dir", po::value<std::string>(), "where to write the project (default: ./NAME); must not exist or be empty");
  po::positional_options_description positional;
  positional.add("name", 1).add("dir", 1);
  auto vm = parse_flags("plugin new", options, positional, {args.begin() + 1, args.end()}, kSynopsis);
  if (!vm) return 0;
  const std::string kind = (*vm)["kind"].as<std::string>(), name = (*vm)["name"].as<std::string>();
  auto skeleton = skeletons().find(kind);
  if (skeleton == skeletons().end())
    throw CommandError(fmt::format("--kind {}: the scaffold writes 'hook' or 'algorithm' plugins", kind));
  if (!std::regex_match(name, std::regex("[a-z][a-z0-9-]*")))
    throw CommandError(fmt::format("NAME '{}': use lower-case letters, digits and '-', starting with a letter", name));
  const fs::path dir = vm->count("dir") ? fs::path((*vm)["dir"].as<std::string>()) : fs::path(name);
  if (fs::exists(dir) && !(fs::is_directory(dir) && fs::is_empty(dir)))
    throw CommandError(fmt::format("{}: exists and is not an empty folder; nothing was written", dir.string()));

  std::string ident = name;
  for (char& c : ident)
    if (c == '-') c = '_';
  const std::map<std::string, std::string> values{
      {"{{name}}", name}, {"{{kind}}", kind}, {"{{ident}}", ident}, {"{{class}}", class_name_of(name)}};
  fs::create_directories(dir);
  write_file_atomic(dir / (name + ".cpp"), fill(skeleton->second, values));
  write_file_atomic(dir / "CMakeLists.txt", fill(kCMakeLists, values));
  std::cout << fmt::format("wrote the {} plugin '{}' in {}:\n  {}\n  {}\nbuild and test it:\n"
                           "  cmake -S {} -B {}/build -G Ninja -DCMAKE_PREFIX_PATH=<dschat's install prefix>\n"
                           "  cmake --build {}/build && ctest --test-dir {}/build\n",
                           kind, name, dir.string(), (dir / "CMakeLists.txt").string(),
                           (dir / (name + ".cpp")).string(), dir.string(), dir.string(), dir.string(),
                           dir.string());
  return 0;
}

const bool registered = register_guarded_command("plugin", plugin_command);

}  // namespace
}  // namespace dschat
