// `dschat plugin test LIB`: the harness the SDK installs for third-party plugins. It loads LIB exactly as the
// host does, then, by what LIB registers:
// - a model family, with --model DIR (a tiny HF folder of its type; share/dschat/testing/make_parity_fixture.py
//   writes one with transformers' outputs): logits, KV-cache decoding and greedy tokens against transformers, the
//   hidden states' width, the HF export read back, and the tensor-parallel and LoRA specs against the parameters;
// - then one short training stage over the SDK's tiny data (share/dschat/testing): --stage FILE's [[stage]]
//   tables, or by default an sft stage that uses LIB's hook, strategy or algorithm (or trains its model).
// Every check prints PASS or FAIL with its figure; the exit code is 1 when one failed, 2 for bad input.
// Under a launcher (torchrun --no-python ... dschat plugin test ...) the stage runs on every rank.
#include <cmath>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "command_support.h"
#include "dschat/framework/cli.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/atomic_file.h"
#include "dschat/sdk/config_document.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/safetensors.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace dschat {

const char* const kTestSynopsis =
    "test LIB [--model DIR] [--stage FILE] [--steps N] [--work DIR] [--tolerance X] [--set key.path=value ...]";

namespace {

class Report {
 public:
  void check(bool ok, const std::string& what, const std::string& detail = "") {
    std::cout << (ok ? "PASS  " : "FAIL  ") << what << (detail.empty() ? "" : ": " + detail) << "\n" << std::flush;
    if (!ok) ++failures_;
  }
  int failures() const { return failures_; }

 private:
  int failures_ = 0;
};

// Where the installed SDK keeps the harness's tiny model, data and fixture script: <prefix>/share/dschat/testing,
// found from the same install layout as the registry's default plugin folder (the build tree has it too).
fs::path testing_dir() {
  const auto dir = (PluginRegistry::default_folder() / ".." / ".." / ".." / "share" / "dschat" / "testing")
                       .lexically_normal();  // <prefix>/lib/dschat/plugins -> <prefix>/share/dschat/testing
  if (!fs::is_directory(dir))
    throw CommandError("dschat plugin test: the SDK's test data are missing (looked for " + dir.string() + ")");
  return dir;
}

std::string toml_string(const fs::path& path) {
  auto text = path.string();
  if (text.find('\'') == std::string::npos) return "'" + text + "'";
  std::string out = "\"";
  for (char c : text) out += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return out + "\"";
}

std::map<std::string, at::Tensor> read_tensors(const fs::path& file) {
  auto f = safetensors::File::open(file);
  std::map<std::string, at::Tensor> out;
  for (const auto& info : f->tensors()) out[info.name] = f->tensor(info).clone();
  return out;
}

// Max |a - b| over real-token positions: padding positions' logits are arbitrary on both sides.
double masked_max_diff(const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask) {
  if (a.sizes() != b.sizes()) return INFINITY;
  return (a.to(at::kFloat) - b.to(at::kFloat)).abs().index({mask.to(at::kBool)}).max().item<double>();
}

at::Tensor greedy(CausalLM& model, const at::Tensor& ids, const at::Tensor& mask, int64_t new_tokens) {
  auto cache = model.allocate_cache(ids.size(0), ids.size(1) + new_tokens);
  auto sequence = ids, full_mask = mask;
  auto logits = model.forward(ids, mask, &cache).logits;
  for (int64_t i = 0; i < new_tokens; ++i) {
    auto next = logits.select(1, logits.size(1) - 1).argmax(-1, /*keepdim=*/true);
    sequence = at::cat({sequence, next}, 1);
    full_mask = at::cat({full_mask, at::ones_like(next)}, 1);
    if (i + 1 < new_tokens) logits = model.forward(next, full_mask, &cache).logits;
  }
  return sequence;
}

// A left-padded batch when the folder has no reference: rows of 7, 4 and 1 tokens, 4 decode steps.
std::map<std::string, at::Tensor> synthetic_batch(int64_t vocab) {
  auto ids = at::randint(vocab, {3, 7}, at::kLong), mask = at::ones({3, 7}, at::kLong);
  mask.narrow(1, 0, 3).select(0, 1).zero_();
  mask.narrow(1, 0, 6).select(0, 2).zero_();
  return {{"input_ids", ids * mask}, {"attention_mask", mask}, {"step_ids", at::randint(vocab, {3, 4}, at::kLong)}};
}

void check_model(Report& report, const ModelFamily& family, const fs::path& dir, const fs::path& work,
                 double tolerance) {
  at::NoGradGuard no_grad;
  at::manual_seed(0);
  const bool has_weights = fs::exists(dir / "model.safetensors") || fs::exists(dir / "model.safetensors.index.json");
  std::shared_ptr<CausalLM> model;
  try {
    model = has_weights ? family.from_pretrained(dir, {}) : family.build(read_hf_config(dir), {});
    report.check(true, has_weights ? "loads " + dir.string() : "builds a random model from " + dir.string(),
                 fmt::format("{} parameters", model->parameters().size()));
  } catch (const std::exception& e) {
    report.check(false, "loads " + dir.string(), e.what());
    return;
  }
  const bool reference = fs::exists(dir / "reference.safetensors");
  auto ref = reference ? read_tensors(dir / "reference.safetensors") : synthetic_batch(model->dims().vocab_size);
  const auto &ids = ref["input_ids"], &mask = ref["attention_mask"], &steps = ref["step_ids"];

  auto logits = model->forward(ids, mask).logits;
  report.check(logits.sizes() == at::IntArrayRef{ids.size(0), ids.size(1), model->dims().vocab_size} &&
                   logits.isfinite().all().item<bool>(),
               "logits are [B, T, vocab_size] and finite");
  if (reference) {
    const double diff = masked_max_diff(logits, ref["logits"], mask);
    report.check(diff <= tolerance, "logits match transformers with left padding",
                 fmt::format("max |diff| {:.3g} (tolerance {:.0e})", diff, tolerance));
  }

  // Prefill in two chunks (several queries over a non-empty cache), then one token at a time.
  const int64_t n = steps.size(1), split = ids.size(1) / 2;
  auto cache = model->allocate_cache(ids.size(0), ids.size(1) + n);
  auto first = model->forward(ids.narrow(1, 0, split), mask.narrow(1, 0, split), &cache).logits;
  auto second = model->forward(ids.narrow(1, split, ids.size(1) - split), mask, &cache).logits;
  auto full_mask = mask;
  std::vector<at::Tensor> step_logits;
  for (int64_t s = 0; s < n; ++s) {
    full_mask = at::cat({full_mask, at::ones({ids.size(0), 1}, at::kLong)}, 1);
    step_logits.push_back(model->forward(steps.narrow(1, s, 1), full_mask, &cache).logits.squeeze(1));
  }
  auto cached = at::stack(step_logits, 1);
  auto full = model->forward(at::cat({ids, steps}, 1), full_mask).logits.narrow(1, ids.size(1), n);
  const double prefill = masked_max_diff(at::cat({first, second}, 1), logits, mask);
  const double decode = (cached - full).abs().max().item<double>();
  report.check(prefill <= tolerance && decode <= tolerance, "KV-cache decoding matches the full forward pass",
               fmt::format("chunked prefill {:.3g}, {} decode steps {:.3g}", prefill, n, decode));
  if (reference) {
    const double diff = (cached - ref["step_logits"]).abs().max().item<double>();
    report.check(diff <= tolerance, "KV-cache decode steps match transformers", fmt::format("max |diff| {:.3g}", diff));
    const auto& expected = ref["generated"];
    auto generated = greedy(*model, ids, mask, expected.size(1) - ids.size(1));
    const auto same = generated.eq(expected).all(1);
    report.check(same.all().item<bool>(), "greedy tokens equal transformers.generate",
                 fmt::format("{}/{} rows identical over {} new tokens (smallest top-2 logit gap {:.3g})",
                             same.sum().item<int64_t>(), same.size(0), expected.size(1) - ids.size(1),
                             ref["min_margin"].item<double>()));
  }

  auto hidden = model->forward(ids, mask, nullptr, /*return_hidden=*/true, /*return_logits=*/false).hidden;
  report.check(hidden.defined() && hidden.size(-1) == model->dims().output_hidden_size,
               "hidden states have dims().output_hidden_size features (what value heads read)");

  // Exported as an HF folder and built again from it: the same function.
  try {
    const auto exported = work / "export";
    fs::remove_all(exported);
    family.export_hf(*model, exported);
    auto again = family.from_pretrained(exported, {});
    const double diff = masked_max_diff(again->forward(ids, mask).logits, logits, mask);
    report.check(diff == 0.0, "export_hf -> from_pretrained gives the same logits", fmt::format("max |diff| {:.3g}", diff));
  } catch (const std::exception& e) {
    report.check(false, "export_hf -> from_pretrained", e.what());
  }

  // The specs strategies and LoRA rely on: every parameter split exactly once, every LoRA target a real linear.
  std::map<std::string, int> named;
  for (const auto& p : model->named_parameters()) named[p.key()] = 0;
  std::vector<std::string> unknown;
  for (const auto& [name, split] : family.tensor_parallel_spec(*model)) {
    (void)split;
    auto it = named.find(name);
    if (it == named.end()) unknown.push_back(name);
    else ++it->second;
  }
  std::vector<std::string> uncovered;
  for (const auto& [name, count] : named)
    if (count != 1) uncovered.push_back(name);
  report.check(unknown.empty() && uncovered.empty(), "tensor_parallel_spec names every parameter exactly once",
               unknown.empty() && uncovered.empty()
                   ? fmt::format("{} parameters", named.size())
                   : fmt::format("not parameters: [{}]; missing or repeated: [{}]", fmt::join(unknown, ", "),
                                 fmt::join(uncovered, ", ")));
  std::vector<std::string> unmatched;
  for (const auto& target : family.lora_target_modules()) {
    bool found = false;
    for (const auto& [name, count] : named) found = found || name.find("." + target + ".weight") != std::string::npos;
    if (!found) unmatched.push_back(target);
  }
  report.check(unmatched.empty(), "every LoRA target module names a linear of the model",
               unmatched.empty() ? fmt::format("{}", fmt::join(family.lora_target_modules(), ", "))
                                 : fmt::format("no weight for [{}]", fmt::join(unmatched, ", ")));
}

// The [[stage]] tables: the user's, or one that exercises what LIB offers: its algorithm (on the actor), or sft
// with its hook or strategy, or a short reward + PPO pair of stages that generates with its generation plugin.
std::string default_stage(const std::vector<const PluginEntry*>& components, int64_t steps) {
  std::string extra, algorithm = "sft", generation;
  for (const auto* c : components) {
    const auto& f = c->factory;
    if (f.kind == "algorithm") algorithm = f.name;
    if (f.kind == "generation") generation = f.name;
    if (f.kind == "hook") extra += fmt::format("hooks = [{{ plugin = \"{}\" }}]\n", f.name);
    if (f.kind == "strategy") extra += fmt::format("strategy = {{ plugin = \"{}\" }}\n", f.name);
  }
  if (!generation.empty() && algorithm == "sft") {
    // PPO's critic starts from a reward model: two reward steps make one.
    return fmt::format("[[stage]]\nname = \"rm\"\nalgorithm = \"reward\"\nmodel = \"critic\"\nmax_steps = 2\n"
                       "per_device_train_batch_size = 8\n\n"
                       "[[stage]]\nname = \"ppo\"\nalgorithm = \"ppo\"\nactor = \"actor\"\ncritic = \"rm\"\n"
                       "max_steps = {}\nper_device_generation_batch_size = 4\nper_device_training_batch_size = 4\n"
                       "eval_prompts = 4\nnum_warmup_steps = 0\n"
                       "generation = {{ plugin = \"{}\", max_new_tokens = 8, do_sample = true }}\n{}",
                       std::min<int64_t>(steps, 2), generation, extra);
  }
  return fmt::format("[[stage]]\nname = \"{}\"\nalgorithm = \"{}\"\nmodel = \"actor\"\nmax_steps = {}\n"
                     "per_device_train_batch_size = 8\nlearning_rate = 1e-3\n{}",
                     algorithm, algorithm, steps, extra);
}

// Every value in each stage's metrics.jsonl ({"step", "tag", "value", "time"} records) is finite; the first and
// last training loss and the last eval loss are shown.
void check_metrics(Report& report, const fs::path& run_dir) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const auto file = entry.path() / "metrics.jsonl";
    if (!fs::exists(file)) continue;
    std::ifstream in(file);
    std::string line;
    int64_t lines = 0, nonfinite = 0;
    std::map<std::string, std::vector<double>> series;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      ++lines;
      auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!record.is_object() || !record.contains("value") || !record["value"].is_number()) {
        ++nonfinite;  // NaN and inf are written as null
        continue;
      }
      const double value = record["value"].get<double>();
      if (!std::isfinite(value)) ++nonfinite;
      if (record.contains("tag") && record["tag"].is_string()) series[record["tag"].get<std::string>()].push_back(value);
    }
    std::string losses;
    for (const char* tag : {"train/loss", "eval/loss"}) {
      auto it = series.find(tag);
      if (it != series.end())
        losses += fmt::format(", {} {:.4g} -> {:.4g}", tag, it->second.front(), it->second.back());
    }
    report.check(lines > 0 && nonfinite == 0, "stage " + entry.path().filename().string() + " wrote finite metrics",
                 fmt::format("{} records{}{}", lines, nonfinite ? fmt::format(", {} not finite", nonfinite) : "",
                             losses));
  }
}

int plugin_test(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("lib", po::value<std::string>()->required(), "the plugin library to test")(
      "model", po::value<std::string>(), "a tiny HF folder for the model checks and the stage (default: the SDK's)")(
      "stage", po::value<std::string>(), "a TOML file of [[stage]] tables to run (default: one sft stage using LIB)")(
      "steps", po::value<int64_t>()->default_value(4), "max_steps of the default stage")(
      "work", po::value<std::string>(), "where to write the pipeline and its run (default: a new folder in /tmp)")(
      "tolerance", po::value<double>()->default_value(1e-4), "largest logit difference allowed (fp32)")(
      "no-stage", "only the load and model checks")(
      "set", po::value<std::vector<std::string>>()->composing(), "override a key of the generated pipeline")(
      "allow-insecure-plugins", "load plugin libraries that other users could have replaced (writable by them)");
  po::positional_options_description positional;
  positional.add("lib", 1);
  auto vm = parse_flags("plugin test", options, positional, args, kTestSynopsis);
  if (!vm) return 0;
  if (vm->count("allow-insecure-plugins")) ::setenv("DSCHAT_ALLOW_INSECURE_PLUGINS", "1", 1);
  const fs::path lib = fs::absolute((*vm)["lib"].as<std::string>()).lexically_normal();
  if (!fs::is_regular_file(lib)) throw CommandError("LIB " + lib.string() + ": no such file");
  std::optional<fs::path> model_dir;
  if (vm->count("model")) model_dir = fs::absolute((*vm)["model"].as<std::string>());
  if (model_dir && !fs::exists(*model_dir / "config.json"))
    throw CommandError("--model " + model_dir->string() + ": no config.json there");
  const auto testing = testing_dir();
  // Under a launcher every rank runs this command: they must share one pipeline folder.
  const int world_size = detect_launch_environment().world_size;
  if (world_size > 1 && !vm->count("work"))
    throw CommandError("dschat plugin test under a launcher: give --work DIR, one folder every rank sees");
  fs::path work;
  if (vm->count("work")) {
    work = fs::absolute((*vm)["work"].as<std::string>());
  } else {
    std::string pattern = (fs::temp_directory_path() / "dschat-plugin-test-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("could not make a folder in /tmp");
    work = pattern;
  }
  fs::create_directories(work);
  std::cout << fmt::format("dschat plugin test {}\n  work folder {}\n", lib.string(), work.string());

  // Loaded as `dschat run` loads it, with the built-in plugins of the default folder beside it.
  Report report;
  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({lib}));
  std::shared_ptr<PluginLibrary> library;
  for (const auto& l : registry.libraries())  // the first record: LIB is searched first (a second one is shadowed)
    if (l->file == lib && !library) library = l;
  report.check(library && library->ok(), "loads (ABI, build fingerprint, interface versions)",
               library ? library->plugin_name + " " + library->plugin_version + ": " + library->status : "not found");
  if (!library || !library->ok()) return 1;
  std::vector<const PluginEntry*> components;
  for (const auto& e : registry.entries()) {
    if (e.library != library) continue;
    report.check(e.ok(), fmt::format("offers {} '{}'", e.factory.kind, e.factory.name), e.status);
    if (e.ok()) components.push_back(&e);
  }
  if (components.empty()) report.check(false, "offers something", "no usable component");

  for (const auto* c : components) {
    if (c->factory.kind != "model") continue;
    if (!model_dir)
      throw CommandError(fmt::format("the model family '{}' needs --model DIR: a tiny HF folder of its type ({} writes "
                                     "one from a config.json)", c->factory.name,
                                     (testing / "make_parity_fixture.py").string()));
    auto document = ConfigDocument::parse_string("", "plugin test", ".");
    auto family = registry.create<ModelFamily>(c->factory.name, document->root());
    const auto type = model_type_of(read_hf_config(*model_dir), *model_dir);
    if (type != family->model_type())
      throw CommandError(fmt::format("--model {}: its model_type is '{}', the plugin's family is '{}'",
                                     model_dir->string(), type, family->model_type()));
    check_model(report, *family, *model_dir, work, (*vm)["tolerance"].as<double>());
  }

  if (!vm->count("no-stage")) {
    const fs::path model = model_dir ? *model_dir : testing / "model";
    const bool pretrained = fs::exists(model / "model.safetensors") || fs::exists(model / "model.safetensors.index.json");
    if (!fs::exists(model / "tokenizer.json"))
      throw CommandError("--model " + model.string() + ": a stage needs its tokenizer.json (or pass --no-stage)");
    std::string stages;
    if (vm->count("stage")) {
      std::ifstream in((*vm)["stage"].as<std::string>());
      if (!in) throw CommandError("--stage " + (*vm)["stage"].as<std::string>() + ": cannot read it");
      std::stringstream text;
      text << in.rdbuf();
      stages = text.str();
    } else {
      stages = default_stage(components, (*vm)["steps"].as<int64_t>());
    }
    const std::string init = pretrained ? "" : "init = \"random\"\n";
    const std::string toml = fmt::format(
        "# Written by `dschat plugin test`: the SDK's tiny data, the plugin under test first on the search path.\n"
        "[pipeline]\nname = \"plugin-test\"\noutput_dir = {}\nseed = 1234\n\n[plugins]\npaths = [{}]\n\n"
        "[strategy]                      # --set strategy.plugin=... runs the stages under another one\n"
        "plugin = \"single\"\n\n"
        "[models.actor]\npath = {}\n{}\n[models.critic]\npath = {}\n{}\n"
        "[data]\ndatasets = [{}]\nsplit = [2, 4, 4]\neval_fraction = 0.1\nmax_seq_len = 96\nmax_prompt_seq_len = 32\n\n{}",
        toml_string(work / "run"), toml_string(lib), toml_string(model), init, toml_string(model), init,
        toml_string(testing / "data" / "requests.jsonl"), stages);
    // A stage folder left by an earlier test would be reused, not run. With several ranks, removing it could race
    // with a faster rank's first writes: use a fresh --work there.
    if (world_size == 1) fs::remove_all(work / "run");
    const auto file = work / "pipeline.toml";
    write_file_atomic(file, toml);
    std::cout << "running " << file.string() << "\n" << std::flush;
    std::vector<std::string> run_args = {"dschat", "run", file.string()};
    if (vm->count("set"))
      for (const auto& o : (*vm)["set"].as<std::vector<std::string>>()) run_args.insert(run_args.end(), {"--set", o});
    std::vector<char*> argv;
    for (auto& a : run_args) argv.push_back(a.data());
    const int code = cli_main(static_cast<int>(argv.size()), argv.data());
    report.check(code == 0, "the pipeline runs", fmt::format("dschat run exited {}", code));
    if (code == 0) check_metrics(report, work / "run");
  }
  std::cout << (report.failures() ? fmt::format("{} checks failed\n", report.failures()) : "all checks passed\n");
  return report.failures() ? 1 : 0;
}

}  // namespace

int plugin_test_command(const std::vector<std::string>& args) { return plugin_test(args); }

}  // namespace dschat
