#include "dschat/framework/chat_template.h"

#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "jinja/lexer.h"
#include "jinja/parser.h"
#include "jinja/runtime.h"
#include "json.h"

namespace dschat {
namespace {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// tokenizer_config.json spells a special token as "text" or as an AddedToken object {"content": "text", ...}.
std::string token_text(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return "";
  const auto& token = config[key];
  if (token.is_string()) return token.get<std::string>();
  if (token.is_object() && token.contains("content") && token["content"].is_string())
    return token["content"].get<std::string>();
  return "";
}

// The "default" template of a list of named ones, as transformers picks it.
std::optional<std::string> template_of(const nlohmann::json& value, const std::filesystem::path& file) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_array()) {
    for (const auto& entry : value)
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string())
        return entry["template"].get<std::string>();
    throw ChatTemplateError(fmt::format("{}: chat_template is a list without a template named \"default\"",
                                        file.string()));
  }
  if (value.is_null()) return std::nullopt;
  throw ChatTemplateError(fmt::format("{}: chat_template must be a string or a list of {{name, template}}",
                                      file.string()));
}

std::shared_ptr<const jinja::program> parse(const std::string& source, const std::string& origin) {
  try {
    jinja::lexer lexer;
    return std::make_shared<const jinja::program>(jinja::parse_from_tokens(lexer.tokenize(source)));
  } catch (const std::exception& e) {
    throw ChatTemplateError(fmt::format("{}: the chat template does not parse: {}", origin, e.what()));
  }
}

}  // namespace

std::optional<ChatTemplate> ChatTemplate::from_dir(const std::filesystem::path& dir) {
  const auto config_file = dir / "tokenizer_config.json";
  nlohmann::json config = nlohmann::json::object();
  if (std::filesystem::exists(config_file)) {
    try {
      config = nlohmann::json::parse(read_file(config_file));
    } catch (const nlohmann::json::exception& e) {
      throw ChatTemplateError(fmt::format("{}: not valid JSON: {}", config_file.string(), e.what()));
    }
  }
  const std::string bos = token_text(config, "bos_token"), eos = token_text(config, "eos_token");
  if (config.contains("chat_template"))
    if (auto source = template_of(config["chat_template"], config_file))
      return ChatTemplate(*source, config_file.string() + " (chat_template)", bos, eos);
  const auto jinja_file = dir / "chat_template.jinja";  // transformers >= 4.43 may save it beside the config
  if (std::filesystem::exists(jinja_file)) return ChatTemplate(read_file(jinja_file), jinja_file.string(), bos, eos);
  return std::nullopt;
}

ChatTemplate::ChatTemplate(std::string source, std::string origin, std::string bos_token, std::string eos_token)
    : source_(std::move(source)), origin_(std::move(origin)), bos_token_(std::move(bos_token)),
      eos_token_(std::move(eos_token)),
      program_(parse(source_, origin_)) {}  // a broken template is reported now, not at the first turn

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const {
  common_json turns = common_json::array();
  for (const auto& message : messages) {
    common_json turn = common_json::object();
    turn["role"] = message.role;
    turn["content"] = message.content;
    turns.push_back(turn);
  }
  common_json inputs = common_json::object();
  inputs["messages"] = turns;
  inputs["bos_token"] = bos_token_;
  inputs["eos_token"] = eos_token_;
  inputs["add_generation_prompt"] = add_generation_prompt;
  try {
    jinja::context context(source_);
    jinja::global_from_json(context, inputs, /*mark_input=*/false);
    jinja::runtime runtime(context);
    return jinja::runtime::gather_string_parts(runtime.execute(*program_))->as_string().str();
  } catch (const std::exception& e) {
    throw ChatTemplateError(fmt::format("{}: rendering the chat template failed: {}", origin_, e.what()));
  }
}

std::string deepspeed_chat_prompt(const std::vector<ChatMessage>& messages) {
  std::string prompt;
  for (const auto& message : messages) {
    if (message.role == "system")
      prompt += message.content;
    else if (message.role == "user")
      prompt += " Human: " + message.content;
    else  // answers are kept as decoded, with their leading space
      prompt += " Assistant:" + (message.content.starts_with(' ') ? "" : std::string(" ")) + message.content;
  }
  return prompt + " Assistant:";
}

}  // namespace dschat
