#include "dschat/framework/cli.h"

#include <cstdlib>
#include <fstream>
#include <iostream>

#include <ATen/Context.h>
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "command_support.h"
#include "dschat/framework/memory_planner.h"
#include "dschat/framework/pipeline.h"
#include "dschat/framework/registry.h"
#include "dschat/framework/runner.h"
#include "dschat/sdk/cpu_allocator.h"
#include "dschat/sdk/device.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/interrupt.h"

namespace po = boost::program_options;

namespace dschat {

namespace {

constexpr int kExitOk = 0;
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

const char* kTopUsage = R"(usage: dschat <command> [options]

commands:
  run FILE        run a pipeline (SFT -> reward model -> PPO, as the file says)
  validate FILE   check a pipeline file, its files, its plugins and whether it fits in memory; do nothing else
  plan FILE       print the memory plan: per rank, stage and phase, the bytes of every state and activation
  plugins         list the plugins found, with version, file and status
  train           DeepSpeed-Chat's one-line launcher: writes the pipeline for --actor-model/--reward-model and runs it
  generate        answer a prompt from an HF model folder (see `dschat generate --help`)
  chat            talk to a model, multi-turn, tokens streamed (see `dschat chat --help`)
  eval            `eval reward`: a reward model's pair accuracy; `eval prompts`: two models' answers side by side
  consolidate     turn a sharded ddp/zero checkpoint into an HF folder (see `dschat consolidate --help`)
  plot RUN_DIR    draw each stage's metrics.jsonl curves as PNG and SVG into RUN_DIR/plots
  plugin new      write an out-of-tree plugin project (--kind model|strategy|generation|algorithm|hook NAME [DIR])

options:
  --version       print dschat's version, the LibTorch version and the build fingerprint
  -h, --help      this message; `dschat <command> --help` for a command's options

exit codes: 0 success, 2 usage or configuration error, 1 failure while running
)";

po::options_description pipeline_options() {
  po::options_description options("options");
  options.add_options()("file", po::value<std::string>()->required(), "pipeline file (TOML)")(
      "set", po::value<std::vector<std::string>>()->composing(),
      "override a key, e.g. --set stage.rlhf.lr=1e-6 (repeatable; value in TOML syntax)")(
      "allow-insecure-plugins", "load plugin libraries that other users could have replaced (writable by them)");
  return options;
}

// The registry reads the permission policy from the environment, so every registry of this process (and the
// ranks a launcher started from it) follows the flag.
void apply_plugin_policy(const po::variables_map& vm) {
  if (vm.count("allow-insecure-plugins")) ::setenv("DSCHAT_ALLOW_INSECURE_PLUGINS", "1", 1);
}

// Loads and validates the pipeline file the flags name; nullopt after printing what is wrong (exit 2).
std::optional<Pipeline> load_reporting(const po::variables_map& vm, PluginRegistry& registry) {
  std::vector<std::string> overrides;
  if (vm.count("set")) overrides = vm["set"].as<std::vector<std::string>>();
  try {
    return load_pipeline(vm["file"].as<std::string>(), overrides, registry);
  } catch (const ConfigErrors& e) {  // everything validation found, in file order
    for (const auto& error : e.errors()) std::cerr << "error: " << error.what() << "\n";
    std::cerr << e.errors().size() << " errors\n";
  } catch (const ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const PluginError& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return std::nullopt;
}

// The memory check of validate and run: false after printing why the pipeline cannot fit.
bool fits_in_memory(const Pipeline& pipeline, bool print_summary) {
  const PipelinePlan plan = plan_pipeline(pipeline, {});
  if (auto refusal = plan_refusal(plan)) {
    std::cerr << "error: the pipeline does not fit in memory:\n"
              << *refusal
              << "(`dschat plan FILE` lists every term; --no-memory-check runs it anyway)\n";
    return false;
  }
  if (print_summary)
    for (const auto& stage : plan.stages)
      std::cout << fmt::format("memory: stage {} peaks at {} per rank ({}) of {} available\n", stage.stage,
                               format_bytes(stage.peak()->device_bytes()), stage.peak()->name,
                               format_bytes(plan.device_capacity));
  return true;
}

int command_validate(const std::vector<std::string>& args, bool run, bool dry_run_allowed) {
  auto options = pipeline_options();
  if (dry_run_allowed) options.add_options()("dry-run", "validate and print the plan; run nothing");
  options.add_options()("no-memory-check", "skip the memory plan's check (see `dschat plan`)");
  po::positional_options_description positional;
  positional.add("file", 1);
  std::string command = run ? "run" : "validate";
  auto vm = parse_flags(command, options, positional, args, "FILE [--set key.path=value ...]" +
                                                                  std::string(run ? " [--dry-run]" : "") +
                                                                  " [--no-memory-check]");
  if (!vm) return kExitOk;
  apply_plugin_policy(*vm);

  PluginRegistry registry;
  auto loaded = load_reporting(*vm, registry);
  if (!loaded) return kExitUsage;
  const Pipeline& pipeline = *loaded;
  if (auto refusal = tensor_parallel_refusal(pipeline)) {
    std::cerr << "error: " << *refusal << "\n";
    return kExitUsage;
  }
  if (!vm->count("no-memory-check") && !fits_in_memory(pipeline, /*print_summary=*/!run)) return kExitUsage;
  if (!run) {
    std::cout << "ok: " << (*vm)["file"].as<std::string>() << " is valid\n" << pipeline.describe();
    return kExitOk;
  }
  if (vm->count("dry-run")) {
    std::cout << "dry run: nothing will be executed\n" << pipeline.describe();
    return kExitOk;
  }
  // Every rank a launcher started joins the world before the first stage (one process: a no-op).
  LaunchEnvironment env;
  c10::Device device = c10::kCPU;
  try {
    env = detect_launch_environment();
    // Each rank's own GPU (its LOCAL_RANK's) is known only now; validate checked the rest.
    device = resolve_device(pipeline.device, env.local_rank, env.local_world_size);
  } catch (const std::invalid_argument& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitUsage;
  }
  use_device(device);
  try {
    init_world(env, {pipeline.distributed.backend, device.is_cuda(), pipeline.distributed.timeout_s});
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    std::cerr.flush();
    std::_Exit(kExitFailure);  // the process group's destructors could wait on ranks that never came
  }
  if (env.world_size > 1)
    std::cout << fmt::format("rank {}: {}, {} backend\n", env.rank, env.describe(), world().backend());
  install_stop_handlers();  // SIGINT/SIGTERM: finish the step, save, exit 128 + signal
  const RunOutcome outcome = run_pipeline(pipeline, registry);
  const bool ok = outcome.ok;
  if (outcome.stop_signal) {
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(outcome.exit_code());  // every rank stopped at the same step and saved; nothing waits on a peer
  }
  if (!ok && env.world_size > 1) {
    // A failed rank leaves now: its peers see the connection close and stop too, instead of each waiting out
    // the timeout in a destructor.
    std::cout.flush();
    std::cerr.flush();
    std::_Exit(kExitFailure);
  }
  return ok ? kExitOk : kExitFailure;
}

int command_plan(const std::vector<std::string>& args) {
  auto options = pipeline_options();
  options.add_options()("world", po::value<int64_t>(), "ranks to plan for (default: the launcher's WORLD_SIZE, else 1)")(
      "ranks-per-host", po::value<int64_t>(), "ranks sharing one host's memory (default: all of them)")(
      "device-memory", po::value<double>(), "GB one rank's device has (default: this machine's)")(
      "json", "print the plan as JSON");
  po::positional_options_description positional;
  positional.add("file", 1);
  auto vm = parse_flags("plan", options, positional, args,
                        "FILE [--world N] [--ranks-per-host N] [--device-memory GB] [--json] [--set key.path=value ...]");
  if (!vm) return kExitOk;
  apply_plugin_policy(*vm);
  PlanOptions plan_options;
  if (vm->count("world")) plan_options.world_size = (*vm)["world"].as<int64_t>();
  if (vm->count("ranks-per-host")) plan_options.ranks_per_host = (*vm)["ranks-per-host"].as<int64_t>();
  if (vm->count("device-memory")) plan_options.device_memory_bytes = static_cast<int64_t>((*vm)["device-memory"].as<double>() * 1e9);
  if (plan_options.world_size < 0 || plan_options.ranks_per_host < 0 || plan_options.device_memory_bytes < 0)
    throw CommandError("dschat plan: --world, --ranks-per-host and --device-memory must be positive");
  PluginRegistry registry;
  auto loaded = load_reporting(*vm, registry);
  if (!loaded) return kExitUsage;
  const PipelinePlan plan = plan_pipeline(*loaded, plan_options);
  const auto refusal = plan_refusal(plan);
  if (vm->count("json")) {
    auto j = plan_json(plan);
    j["fits"] = !refusal.has_value();
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << describe_plan(plan);
    if (refusal) std::cout << "does not fit:\n" << *refusal;
    else std::cout << "fits: every stage's peak is within the memory available\n";
  }
  return refusal ? kExitUsage : kExitOk;
}

int command_plugins(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("json", "print the table as JSON")(
      "path", po::value<std::vector<std::string>>()->composing(),
      "extra plugin folder or file, searched first (repeatable)")(
      "allow-insecure-plugins", "load plugin libraries that other users could have replaced (writable by them)");
  po::positional_options_description positional;
  auto vm = parse_flags("plugins", options, positional, args, "[--json] [--path DIR ...] [--allow-insecure-plugins]");
  if (!vm) return kExitOk;
  apply_plugin_policy(*vm);
  std::vector<std::filesystem::path> extra;
  if (vm->count("path"))
    for (const auto& p : (*vm)["path"].as<std::vector<std::string>>()) extra.emplace_back(p);
  PluginRegistry registry;
  auto paths = PluginRegistry::search_paths(extra);
  for (size_t i = 0; i < extra.size(); ++i) paths[i].origin = PluginOrigin::command_line;
  registry.discover(paths);
  std::cout << (vm->count("json") ? registry.table_json() + "\n" : registry.table_text());
  return kExitOk;
}

void print_version() {
  auto fp = this_build_fingerprint();
  std::cout << fmt::format("dschat {} (plugin ABI {}.{})\n", DSCHAT_VERSION, DSCHAT_ABI_MAJOR, DSCHAT_ABI_MINOR)
            << fmt::format("LibTorch {}\n", fp.torch_version)
            << fmt::format("build fingerprint: torch_version={} cxx11_abi={} compiler=\"{}\" libstdcxx_release={} cuda={} "
                           "sdk_headers={}\n",
                           fp.torch_version, fp.cxx11_abi, fp.compiler, fp.libstdcxx_release, fp.cuda, fp.sdk_headers);
  std::string problem;
  auto accelerators = list_accelerators(&problem);
  if (accelerators.empty()) std::cout << "accelerators: none (" << problem << ")\n";
  for (const auto& a : accelerators)
    std::cout << fmt::format("accelerator {}: {} (sm_{}{}, {:.1f} GiB)\n", a.index, a.name, a.compute_major,
                             a.compute_minor, a.memory_bytes / double(1 << 30));
}

}  // namespace

int cli_main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << kTopUsage;
    return kExitUsage;
  }
  const std::string command = args.front();
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    install_cpu_allocator_from_environment();  // before any tensor: see dschat/sdk/cpu_allocator.h
    if (command == "--help" || command == "-h" || command == "help") {
      std::cout << kTopUsage;
      return kExitOk;
    }
    if (command == "--version" || command == "version") {
      print_version();
      return kExitOk;
    }
    if (command == "run") return command_validate(rest, /*run=*/true, /*dry_run_allowed=*/true);
    if (command == "validate") return command_validate(rest, /*run=*/false, /*dry_run_allowed=*/false);
    if (command == "plugins") return command_plugins(rest);
    if (command == "plan") return command_plan(rest);
    if (auto it = extra_commands().find(command); it != extra_commands().end()) return it->second(rest);
    std::cerr << fmt::format("dschat: unknown command '{}'\n\n{}", command, kTopUsage);
    return kExitUsage;
  } catch (const CommandError& e) {
    std::cerr << e.what() << "\n";
    return kExitUsage;
  } catch (const ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return kExitFailure;
  }
}

}  // namespace dschat
