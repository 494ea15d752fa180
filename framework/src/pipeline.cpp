#include "dschat/framework/pipeline.h"

#include "dschat/sdk/device.h"

#include <unistd.h>

#include <optional>
#include <set>

#include <c10/core/DefaultDtype.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dschat/framework/hub.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/init.h"
#include "dschat/sdk/reward.h"
#include "dschat/sdk/safetensors.h"
#include "dschat/sdk/tokenizer.h"

namespace dschat {

at::ScalarType ModelSpec::scalar_type() const {
  return dtype == "bf16" ? at::kBFloat16 : dtype == "fp16" ? at::kHalf : at::kFloat;
}

namespace {

// The SDK's reader, with its error placed at the pipeline key that named the folder.
nlohmann::json read_model_config(const ConfigTable& model, const std::filesystem::path& dir) {
  try {
    return read_hf_config(dir);
  } catch (const std::exception& e) {
    model.fail("path", fmt::format("not an HF model folder: {}", e.what()));
  }
}

// `path` is a folder (relative to the pipeline file) or a Hub id, resolved to its cache snapshot (downloading what
// is missing) so that every later check reads real files.
std::filesystem::path model_folder(const ConfigTable& table) {
  const std::string text = table.get_string("path");
  std::filesystem::path local = table.get_path("path", /*must_exist=*/false);
  std::error_code ec;
  if (std::filesystem::exists(local, ec)) return local;
  auto id = HubId::parse(text);
  if (!id) table.fail("path", fmt::format("no such file or folder: {} (nor is it a Hub id org/name[@revision])", local.string()));
  try {
    return resolve_hub_model(*id, HubSettings::from_environment());
  } catch (const HubError& e) {
    table.fail("path", e.what());
  }
}

ModelSpec read_model(const std::string& name, const ConfigTable& table, const PluginRegistry& registry) {
  ModelSpec spec;
  spec.name = name;
  spec.path = model_folder(table);
  spec.dtype = table.get_choice("dtype", {"fp32", "bf16", "fp16"}, "fp32");
  spec.init = table.get_choice("init", {"pretrained", "random"}, "pretrained");
  spec.hf_config = read_model_config(table, spec.path);
  std::string model_type;
  try {
    model_type = model_type_of(spec.hf_config, spec.path);
  } catch (const std::invalid_argument& e) {
    table.fail("path", e.what());
  }
  try {
    spec.family = registry.create<ModelFamily>(model_type, table);
  } catch (const PluginError& e) {
    table.fail("path", fmt::format("model_type \"{}\" of {}/config.json: {}", model_type, spec.path.string(),
                                   e.what()));
  }
  return spec;
}

// A plugin reference: a table whose `plugin` key names the plugin and whose other keys are its options.
template <class Interface>
std::shared_ptr<Interface> create_from_table(const ConfigTable& table, const PluginRegistry& registry,
                                             std::optional<std::string> default_plugin = std::nullopt) {
  std::string name = table.get_string("plugin", std::move(default_plugin));
  try {
    return registry.create<Interface>(name, table);
  } catch (const PluginError& e) {
    table.fail("plugin", e.what());
  }
}

StrategySpec read_strategy(const ConfigTable& table, const PluginRegistry& registry) {
  StrategySpec spec;
  spec.plugin = table.get_string("plugin", "single");
  spec.strategy = create_from_table<Strategy>(table, registry, "single");
  return spec;
}

// Resolves a dataset's schema: given, or detected from its first line. Data-file problems found here are
// reported at the key that names the file.
void resolve_schema(DatasetSpec& ds, const ConfigTable& table, std::string_view key, bool pretraining) {
  if (pretraining) {
    ds.schema = "text";
    return;
  }
  if (ds.schema.empty() || ds.schema == "auto") {
    try {
      ds.schema = detect_schema(ds.path);
    } catch (const DataError& e) {
      table.fail(key, e.what());
    }
  }
  if (ds.schema == "text")
    table.fail(key, fmt::format("{} holds plain text: list it in [data].pretraining, not as a training dataset",
                                ds.path.string()));
}

DataSpec read_data(const ConfigTable& data) {
  DataSpec spec;
  std::vector<std::filesystem::path> paths;
  if (data.has("datasets")) paths = data.get_path_list("datasets", true);
  for (size_t i = 0; i < paths.size(); ++i) {
    DatasetSpec ds;
    ds.path = paths[i];
    resolve_schema(ds, data, "datasets", false);
    spec.datasets.push_back(std::move(ds));
  }
  for (const auto& table : data.get_table_list("dataset")) {
    DatasetSpec ds;
    ds.path = table.get_path("path", true);
    ds.schema = table.get_choice("schema", {"auto", "rm-static", "pairwise", "sft"}, "auto");
    ds.prompt_field = table.get_string("prompt_field", ds.prompt_field);
    ds.chosen_field = table.get_string("chosen_field", ds.chosen_field);
    ds.rejected_field = table.get_string("rejected_field", ds.rejected_field);
    ds.response_field = table.get_string("response_field", ds.response_field);
    ds.skip_errors = table.get_choice("on_error", {"fail", "skip"}, "fail") == "skip";
    resolve_schema(ds, table, "path", false);
    spec.datasets.push_back(std::move(ds));
  }
  std::vector<std::filesystem::path> ptx;
  if (data.has("pretraining")) ptx = data.get_path_list("pretraining", true);
  for (const auto& path : ptx) {
    DatasetSpec ds;
    ds.path = path;
    ds.schema = "text";
    spec.pretraining.push_back(std::move(ds));
  }
  if (spec.datasets.empty() && spec.pretraining.empty())
    data.fail_here("declare datasets = [\"file.jsonl\", ...] or [[data.dataset]] path = \"...\"");
  spec.split = data.get_int_list("split", std::vector<int64_t>{2, 4, 4});
  if (spec.split.size() != 3)
    data.fail("split", fmt::format("expected 3 shares (SFT, RM, PPO), found {}", spec.split.size()));
  int64_t total = 0;
  for (auto s : spec.split) {
    if (s < 0) data.fail("split", "shares must be >= 0");
    total += s;
  }
  if (total == 0) data.fail("split", "shares must not all be 0");
  spec.eval_fraction = data.get_float("eval_fraction", 0.1, 0.0, 0.9);
  spec.max_seq_len = data.get_int("max_seq_len", 512, 2);
  spec.max_prompt_seq_len = data.get_int("max_prompt_seq_len", 256, 1);
  if (spec.max_prompt_seq_len >= spec.max_seq_len)
    data.fail("max_prompt_seq_len", fmt::format("must be below max_seq_len ({})", spec.max_seq_len));
  return spec;
}

// A stage that trains on a share of the split must get rows there, and pairs if it needs them: single-answer
// (sft-schema) datasets feed only SFT, pair datasets every share whose split entry is above 0.
void check_data_needs(const ConfigTable& stage_table, const StageSpec& stage, const DataSpec& data) {
  const DataNeeds needs = stage.algorithm->data_needs();
  if (!needs.phase) return;
  const auto phase = static_cast<size_t>(*needs.phase);
  const char* share[] = {"SFT", "reward", "PPO"};
  bool rows = false, pairs = false;
  for (const auto& ds : data.datasets) {
    const bool paired = ds.schema == "rm-static" || ds.schema == "pairwise";
    const bool feeds = ds.schema == "sft" ? phase == 0 : phase < data.split.size() && data.split[phase] > 0;
    rows |= feeds;
    pairs |= feeds && paired;
  }
  if (!rows)
    stage_table.fail("algorithm", fmt::format("{} trains on the {} share of [data], which no dataset feeds (split = "
                                              "[{}]; single-answer datasets feed only SFT)",
                                              stage.algorithm_name, share[phase], fmt::join(data.split, ", ")));
  if (needs.pairs && !pairs)
    stage_table.fail("algorithm", fmt::format("{} needs chosen/rejected pairs, and the datasets feeding its share "
                                              "hold single answers (schema sft)", stage.algorithm_name));
}

// The key of `table` whose string value is `value` (the option that named it, e.g. a reward's `model` or
// `field`), so that a problem with it is reported there; "" when none is.
std::string key_holding(const ConfigTable& table, const std::string& value) {
  for (const auto& key : table.keys()) {
    try {
      if (table.get_string(key) == value) return key;
    } catch (const ConfigError&) {  // not a string
    }
  }
  return "";
}

[[noreturn]] void fail_at_value(const ConfigTable& table, const std::string& value, const std::string& message) {
  const std::string key = key_holding(table, value);
  if (key.empty()) table.fail_here(message);
  table.fail(key, message);
}

// The rows of the datasets, parsed once for the checks that read them (a reward's required fields). A dataset
// that does not parse is left to the run to report (nullptr), as it is when no check reads it.
class ParsedDatasets {
 public:
  explicit ParsedDatasets(const DataSpec& data) : data_(data), rows_(data.datasets.size()) {}
  const std::vector<SourcedExample>* rows(size_t d) {
    if (!rows_[d]) {
      try {
        int64_t skipped = 0;
        rows_[d] = parse_dataset(data_.datasets[d], d, skipped);
      } catch (const DataError&) {
        rows_[d] = std::vector<SourcedExample>{};
      }
    }
    return rows_[d]->empty() ? nullptr : &*rows_[d];
  }

 private:
  const DataSpec& data_;
  std::vector<std::optional<std::vector<SourcedExample>>> rows_;
};

// Every row of every dataset that feeds the stage's share must carry each field a reward of the stage requires
// (TextExample::fields): the first row lacking one is named, before any stage runs.
void check_reward_fields(const std::vector<ConfigTable>& reward_tables, const StageSpec& stage, const DataSpec& data,
                         ParsedDatasets& parsed, const PluginRegistry& registry) {
  if (stage.rewards.empty()) return;
  const DataNeeds needs = stage.algorithm->data_needs();
  if (!needs.phase) return;
  const auto phase = static_cast<size_t>(*needs.phase);
  for (size_t r = 0; r < stage.rewards.size(); ++r) {
    const auto& reward = stage.rewards[r];
    const auto fields = call_plugin(registry.find(RewardFunction::kind, reward.name),
                                    [&] { return reward.function->required_fields(); });
    for (const auto& field : fields)
      for (size_t d = 0; d < data.datasets.size(); ++d) {
        const auto& ds = data.datasets[d];
        const bool feeds = ds.schema == "sft" ? phase == 0 : phase < data.split.size() && data.split[phase] > 0;
        if (!feeds) continue;
        const auto* rows = parsed.rows(d);
        if (rows == nullptr) continue;
        const SourcedExample* first = nullptr;
        size_t lacking = 0;
        for (const auto& row : *rows)
          if (!row.text.fields.count(field)) {
            if (first == nullptr) first = &row;
            ++lacking;
          }
        if (first != nullptr)
          fail_at_value(reward_tables[r], field,
                        fmt::format("the {} reward reads the field '{}' of every row, and {}:{} has none (a string "
                                    "or number field; rows lacking it: {} of {})",
                                    reward.name, field, ds.path.string(), first->line, lacking, rows->size()));
      }
  }
}

// Validation goes on after an error: each independent part (a model, the data, a stage, ...) is read on its own,
// and what fails is recorded, so that one run of `validate` reports every problem it can find.
class ErrorCollector {
 public:
  // Runs `read`; a ConfigError it throws is recorded, and `table` (the part being read) is left out of the
  // unknown-key check, since the keys after the failure were never read.
  template <class Fn>
  bool attempt(const std::optional<ConfigTable>& table, Fn&& read) {
    try {
      read();
      return true;
    } catch (const ConfigErrors& e) {
      errors_.insert(errors_.end(), e.errors().begin(), e.errors().end());
    } catch (const ConfigError& e) {
      errors_.push_back(e);
    }
    if (table) table->skip_unknown_key_check();
    return false;
  }
  bool empty() const { return errors_.empty(); }
  [[noreturn]] void raise() {
    if (errors_.size() == 1) throw errors_.front();
    throw ConfigErrors(std::move(errors_));
  }

 private:
  std::vector<ConfigError> errors_;
};

// The model must fit in memory at all: its weights alone, estimated from config.json, against this machine's RAM
// (absurd sizes otherwise end in LibTorch's allocation error deep inside the first stage).
void check_model_fits(const ConfigTable& table, const ModelSpec& spec) {
  const auto& c = spec.hf_config;
  auto first = [&](std::initializer_list<const char*> keys, double fallback) {
    for (const char* k : keys)
      if (c.contains(k) && c[k].is_number()) return c[k].get<double>();
    return fallback;
  };
  const double hidden = first({"hidden_size", "n_embd", "d_model"}, 0);
  const double layers = first({"num_hidden_layers", "n_layer", "num_layers"}, 0);
  const double vocab = first({"vocab_size"}, 0);
  const double ffn = first({"intermediate_size", "ffn_dim", "n_inner"}, 4 * hidden);
  const double parameters = vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * ffn);
  const double bytes = parameters * (spec.dtype == "fp32" ? 4 : 2);
  const double ram = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGESIZE));
  if (ram > 0 && bytes > ram)
    table.fail("path", fmt::format("{}/config.json describes a model of about {:.3g} parameters: its {} weights alone "
                                   "need {:.3g} GB, and this machine has {:.3g} GB of memory",
                                   spec.path.string(), parameters, spec.dtype, bytes / 1e9, ram / 1e9));
}

// A pretrained folder's weights and tokenizer are opened now (headers only), so a broken critic folder is found
// before the SFT stage trains, not after.
void check_model_files(const ConfigTable& table, const ModelSpec& spec) {
  std::vector<std::string> problems;
  if (spec.init == "pretrained") {
    try {  // every tensor name, shape and dtype against the model config.json describes
      spec.family->check_pretrained(spec.path, ModelOptions{spec.scalar_type()});
    } catch (const safetensors::SafetensorsError& e) {
      problems.push_back(fmt::format("weights: {}", e.what()));
    } catch (const CheckpointError& e) {
      problems.push_back(fmt::format("weights: {}", e.what()));
    }
  } else {
    // A random-init model has no weights to check, but its config.json must still build: the family reads every
    // key now (a bad or missing one names itself), not when the stage that uses the model starts. The weights are
    // allocated in the model's dtype and never written, so no page of them is touched (check_model_fits bounded
    // their size first).
    try {
      build_untouched(spec);
    } catch (const std::exception& e) {
      problems.push_back(fmt::format("config.json: {}", e.what()));
    }
  }
  try {
    Tokenizer::from_dir(spec.path);
  } catch (const std::exception& e) {
    problems.push_back(fmt::format("tokenizer: {}", e.what()));
  }
  if (!problems.empty()) table.fail("path", fmt::format("{}", fmt::join(problems, "; ")));
}

}  // namespace

std::shared_ptr<CausalLM> build_untouched(const ModelSpec& spec) {
  SkipWeightInit untouched;
  const auto previous_default = c10::get_default_dtype();
  if (at::isFloatingType(spec.scalar_type())) c10::set_default_dtype(c10::scalarTypeToTypeMeta(spec.scalar_type()));
  try {
    auto lm = spec.family->build(spec.hf_config, ModelOptions{spec.scalar_type()});
    c10::set_default_dtype(previous_default);
    return lm;
  } catch (...) {
    c10::set_default_dtype(previous_default);
    throw;
  }
}

const ModelSpec& root_model(const Pipeline& pipeline, const std::string& reference) {
  if (auto it = pipeline.models.find(reference); it != pipeline.models.end()) return it->second;
  for (const auto& stage : pipeline.stages) {
    if (stage.name != reference) continue;
    // The stage's first role names the model it trained ("model" or "actor").
    for (const char* role : {"model", "actor"})
      if (auto r = stage.roles.find(role); r != stage.roles.end()) return root_model(pipeline, r->second);
    if (!stage.roles.empty()) return root_model(pipeline, stage.roles.begin()->second);
  }
  throw std::invalid_argument(fmt::format("cannot resolve model reference '{}'", reference));
}

Pipeline load_pipeline(const std::filesystem::path& file, const std::vector<std::string>& overrides,
                       PluginRegistry& registry) {
  Pipeline p;
  p.document = ConfigDocument::parse_file(file);
  for (const auto& o : overrides) p.document->apply_override(o);
  ConfigTable root = p.document->root();
  ErrorCollector errors;

  // Plugins first: the pipeline's own folders come before DSCHAT_PLUGIN_PATH and the default folder.
  auto plugins = root.get_optional_table("plugins");
  if (plugins) errors.attempt(plugins, [&] { p.plugin_paths = plugins->get_path_list("paths", true); });
  registry.discover(PluginRegistry::search_paths(p.plugin_paths));

  std::optional<ConfigTable> pipeline;
  errors.attempt(std::nullopt, [&] { pipeline = root.get_table("pipeline"); });
  if (pipeline)
    errors.attempt(pipeline, [&] {
      p.name = pipeline->get_string("name");
      p.output_dir = pipeline->get_path("output_dir", false, "runs/" + p.name);
      p.seed = static_cast<uint64_t>(pipeline->get_int("seed", 1234, 0));
      p.device = pipeline->get_string("device", "auto");
      try {  // here, so that a CUDA device on a CPU build or machine is refused before any work
        resolve_device(p.device);
      } catch (const std::invalid_argument& e) {
        pipeline->fail("device", e.what());
      }
    });

  std::optional<ConfigTable> models;
  errors.attempt(std::nullopt, [&] { models = root.get_table("models"); });
  if (models) {
    for (const auto& key : models->keys()) {
      std::optional<ConfigTable> table;
      errors.attempt(std::nullopt, [&] { table = models->get_table(key); });
      if (!table) continue;
      errors.attempt(table, [&] {
        ModelSpec spec = read_model(key, *table, registry);
        check_model_fits(*table, spec);
        check_model_files(*table, spec);
        p.models.emplace(key, std::move(spec));
      });
    }
    if (models->keys().empty())
      errors.attempt(std::nullopt, [&] { models->fail_here("declare at least one model, e.g. [models.actor] path = \"...\""); });
  }

  auto strategy = root.get_optional_table("strategy");
  if (strategy) errors.attempt(strategy, [&] { p.strategy = read_strategy(*strategy, registry); });

  auto data = root.get_optional_table("data");
  bool data_ok = true;  // a [data] that failed to read is reported once, not again by every stage's data needs
  if (data)
    data_ok = errors.attempt(data, [&] { p.data = read_data(*data); });
  if (data && data_ok)
    errors.attempt(std::nullopt, [&] {
      // A learned position table (OPT) has no row past its end, and rope models (LLaMA) were trained up to it;
      // BLOOM's alibi declares no such limit.
      for (const auto& [name, model] : p.models)
        for (const char* key : {"max_position_embeddings", "n_positions"})
          if (model.hf_config.contains(key) && model.hf_config[key].is_number_integer() &&
              p.data.max_seq_len > model.hf_config[key].get<int64_t>())
            data->fail("max_seq_len", fmt::format("{} exceeds the {} of model '{}' ({}, from {}/config.json)",
                                                  p.data.max_seq_len, key, name, model.hf_config[key].get<int64_t>(),
                                                  model.path.string()));
    });
  auto distributed = root.get_optional_table("distributed");
  if (distributed)
    errors.attempt(distributed, [&] {
      p.distributed.backend = distributed->get_choice("backend", {"auto", "gloo", "nccl"}, "auto");
      p.distributed.timeout_s = distributed->get_float("timeout_s", 300.0, 1.0);
    });

  std::vector<ConfigTable> stage_tables;
  errors.attempt(std::nullopt, [&] {
    stage_tables = root.get_table_list("stage", /*required=*/true);
    if (stage_tables.empty()) root.fail("stage", "declare at least one [[stage]]");
  });
  auto defaults = ConfigDocument::parse_string("", "<defaults>", p.document->base_dir());
  ConfigTable no_options = defaults->root();
  std::set<std::string> known_outputs;  // models.* entries and the stages declared so far
  ParsedDatasets parsed_data(p.data);
  if (models)
    for (const auto& key : models->keys()) known_outputs.insert(key);  // a broken model is still a name
  for (auto& table : stage_tables) {
    StageSpec stage;
    errors.attempt(table, [&] {
      stage.name = table.get_string("name");
      if (known_outputs.count(stage.name))
        table.fail("name", fmt::format("'{}' is already the name of a model or an earlier stage", stage.name));
      table.set_path("stage." + stage.name);
      stage.algorithm_name = table.get_string("algorithm");
      if (auto override_table = table.get_optional_table("strategy")) {
        stage.strategy = read_strategy(*override_table, registry);
      } else if (p.strategy.strategy) {
        stage.strategy = p.strategy;
      } else {
        stage.strategy = {"single", registry.create<Strategy>("single", no_options)};
      }
      if (auto generation = table.get_optional_table("generation"))
        stage.generator = create_from_table<Generator>(*generation, registry);
      for (const auto& hook_table : table.get_table_list("hooks"))
        stage.hooks.push_back(create_from_table<Hook>(hook_table, registry));
      // rewards = [{ plugin = "...", weight = 1.0, ...options }]: `weight` is the host's, the rest the plugin's.
      const std::vector<ConfigTable> reward_tables = table.get_table_list("rewards");
      for (const auto& reward_table : reward_tables) {
        WeightedReward reward;
        reward.name = reward_table.get_string("plugin");
        reward.weight = reward_table.get_float("weight", 1.0);
        reward.function = create_from_table<RewardFunction>(reward_table, registry);
        stage.rewards.push_back(std::move(reward));
      }

      try {
        stage.algorithm = registry.create<Algorithm>(stage.algorithm_name, table);
      } catch (const PluginError& e) {
        table.fail("algorithm", e.what());
      }
      stage.roles = call_plugin(registry.find(Algorithm::kind, stage.algorithm_name),
                                [&] { return stage.algorithm->model_roles(); });
      for (const auto& [role, reference] : stage.roles) {
        if (!known_outputs.count(reference)) {
          std::vector<std::string> candidates(known_outputs.begin(), known_outputs.end());
          std::string hint = closest_match(reference, candidates);
          table.fail(role, fmt::format("'{}' is neither a [models.*] entry nor an earlier stage (known: {}){}",
                                       reference, fmt::join(candidates, ", "),
                                       hint.empty() ? "" : fmt::format("; did you mean '{}'?", hint)));
        }
      }
      // A reward's model roles join the stage's, so that the runner resolves them and later stages are ordered
      // after what they read; each is checked at its reward's table.
      for (size_t r = 0; r < stage.rewards.size(); ++r) {
        const auto& reward = stage.rewards[r];
        const auto roles = call_plugin(registry.find(RewardFunction::kind, reward.name),
                                       [&] { return reward.function->model_roles(); });
        for (const auto& [role, reference] : roles) {
          if (auto it = stage.roles.find(role); it != stage.roles.end() && it->second != reference)
            fail_at_value(reward_tables[r], reference,
                          fmt::format("the {} reward's model role '{}' = '{}' collides with the stage's role '{}' = "
                                      "'{}'",
                                      reward.name, role, reference, role, it->second));
          if (!known_outputs.count(reference)) {
            std::vector<std::string> candidates(known_outputs.begin(), known_outputs.end());
            std::string hint = closest_match(reference, candidates);
            fail_at_value(reward_tables[r], reference,
                          fmt::format("'{}' is neither a [models.*] entry nor an earlier stage (known: {}){}",
                                      reference, fmt::join(candidates, ", "),
                                      hint.empty() ? "" : fmt::format("; did you mean '{}'?", hint)));
          }
          stage.roles.emplace(role, reference);
        }
      }
      if (data_ok) check_data_needs(table, stage, p.data);
      if (data_ok) check_reward_fields(reward_tables, stage, p.data, parsed_data, registry);
      p.stages.push_back(stage);
    });
    if (!stage.name.empty()) known_outputs.insert(stage.name);  // later stages may name it, even if it is broken
  }

  errors.attempt(std::nullopt, [&] { root.check_no_unknown_keys(); });
  if (!errors.empty()) errors.raise();
  return p;
}

std::string Pipeline::describe() const {
  std::string out = fmt::format("pipeline {}: output {}, seed {}, device {}\n", name, output_dir.string(), seed, device);
  for (const auto& [key, m] : models)
    out += fmt::format("  model {:<8} {} ({}, {}, {} init)\n", key, m.path.string(),
                       m.hf_config.value("model_type", "?"), m.dtype, m.init);
  if (!data.datasets.empty() || !data.pretraining.empty()) {
    std::vector<std::string> files, ptx;
    for (const auto& d : data.datasets) files.push_back(fmt::format("{} ({})", d.path.filename().string(), d.schema));
    for (const auto& d : data.pretraining) ptx.push_back(d.path.filename().string());
    out += fmt::format("  data: {} split {} eval {:g}, max_seq_len {}, max_prompt_seq_len {}{}\n", fmt::join(files, ", "),
                       fmt::join(data.split, "/"), data.eval_fraction, data.max_seq_len, data.max_prompt_seq_len,
                       ptx.empty() ? "" : fmt::format("; pretraining {}", fmt::join(ptx, ", ")));
  }
  for (size_t i = 0; i < stages.size(); ++i) {
    const auto& s = stages[i];
    std::vector<std::string> roles;
    for (const auto& [role, ref] : s.roles) roles.push_back(role + "=" + ref);
    out += fmt::format("  stage {} {:<6} algorithm {:<7} strategy {:<24} {} -> {}\n", i + 1, s.name, s.algorithm_name,
                       s.strategy.strategy ? s.strategy.strategy->describe() : s.strategy.plugin,
                       fmt::join(roles, " "), (output_dir / s.name).string());
  }
  return out;
}

}  // namespace dschat
