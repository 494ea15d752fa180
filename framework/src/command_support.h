#pragma once
// What the model-facing commands (generate, chat, eval) share: the --model argument, loading a folder through the
// model plugins, and the sampling flags handed to a generation plugin.
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <vector>
#include <string>

#include <boost/program_options.hpp>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "dschat/sdk/generation.h"

namespace dschat {

class CausalLM;
class Generator;
class PluginRegistry;
class RewardModel;
class Tokenizer;

// Bad input found before any work: the command prints it and exits 2.
class CommandError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses a command's arguments (with -h/--help added); nullopt after printing the help. A bad flag is a
// CommandError carrying the usage line.
std::optional<boost::program_options::variables_map> parse_flags(
    const std::string& command, const boost::program_options::options_description& options,
    const boost::program_options::positional_options_description& positional, const std::vector<std::string>& args,
    const std::string& synopsis);

// Runs a command body: bad input (CommandError, a plugin or config error, a broken chat template) is printed as
// "dschat COMMAND: ..." with exit code 2; anything else propagates (exit 1 from cli_main).
int run_guarded(const std::string& command, const std::function<int()>& body);

// Registers `command` as a `dschat` sub-command whose body runs under run_guarded; for `const bool registered =`.
bool register_guarded_command(const std::string& command, int (*body)(const std::vector<std::string>& args));

// `dschat plugin test LIB ...` (plugin_test_command.cpp), reached through `dschat plugin`.
extern const char* const kTestSynopsis;
int plugin_test_command(const std::vector<std::string>& args);

// A model folder (or Hub id, resolved into the cache); `flag` names the argument in errors ("--model").
std::filesystem::path resolve_model_flag(const std::string& value, const std::string& flag);

// The folder's tokenizer; CommandError naming the folder when it has none.
std::shared_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& dir, const std::string& flag);

// Builds the folder's model with the plugin for its config.json's model_type and loads its weights onto `device`.
std::shared_ptr<CausalLM> load_causal_lm(PluginRegistry& registry, const std::filesystem::path& dir,
                                         at::ScalarType dtype, const std::string& flag,
                                         c10::Device device = c10::kCPU);

// A reward stage's final/ folder (base model + value_head.safetensors); CommandError when `dir` is not one.
std::shared_ptr<RewardModel> load_reward_model(PluginRegistry& registry, const std::filesystem::path& dir,
                                               at::ScalarType dtype, const std::string& flag,
                                               c10::Device device = c10::kCPU);

// --max-new-tokens, --greedy, --temperature, --top-p, --top-k, --seed, --dtype, --device, --generation.
boost::program_options::options_description sampling_flags(int64_t default_max_new_tokens);
at::ScalarType dtype_flag(const boost::program_options::variables_map& vm);
// --device (auto | cpu | cuda | cuda:N, as [pipeline].device); the CPU where the command has no such flag.
c10::Device device_flag(const boost::program_options::variables_map& vm);

// The generation plugin the flags name, with their sampling options (its checks apply, as in a pipeline).
std::shared_ptr<Generator> make_generator(PluginRegistry& registry, const boost::program_options::variables_map& vm);
// The generator's defaults with the --seed, the tokenizer's pad, and as end tokens the tokenizer's eos plus those
// of model_dir/generation_config.json (chat models end a turn with their own token: Llama 3's <|eot_id|>).
SamplingOptions sampling_for(const Generator& generator, const Tokenizer& tokenizer,
                             const boost::program_options::variables_map& vm, const std::filesystem::path& model_dir);

}  // namespace dschat
