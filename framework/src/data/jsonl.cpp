// JSONL in DeepSpeed-Chat's schemas. Every problem names the file, the line and the field.
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "dschat/framework/data.h"
#include "../../../sdk/src/nesting_limits.h"

namespace dschat {

namespace {

std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(fmt::format("{}: cannot open", path.string()));
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool blank(std::string_view line) { return line.find_first_not_of(" \t\r\n") == std::string_view::npos; }

// Calls fn(line_number, line) for each non-blank line; an error if there is none.
template <class Fn>
void for_each_line(const std::filesystem::path& path, Fn&& fn) {
  std::string content = read_all(path);
  size_t pos = 0;
  int64_t number = 0;
  bool any = false;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string::npos) end = content.size();
    ++number;
    std::string_view line(content.data() + pos, end - pos);
    if (!blank(line)) {
      any = true;
      fn(number, line);
    }
    pos = end + 1;
  }
  if (!any) throw DataError(fmt::format("{}: empty file: no examples", path.string()));
}

nlohmann::json parse_object(const std::filesystem::path& path, int64_t line_number, std::string_view line) {
  if (auto deep = limits::json_nesting_excess(line))
    throw DataError(fmt::format("{}:{}: JSON nests deeper than {} levels at column {}", path.string(), line_number,
                                limits::kMaxJsonDepth, deep->column));
  nlohmann::json row;
  try {
    row = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    // e.what() carries "[json.exception.parse_error.101] parse error at line 1, column 7: ..."; keep the column.
    std::string what = e.what();
    auto at = what.find("column");
    throw DataError(fmt::format("{}:{}: invalid JSON{}", path.string(), line_number,
                                at == std::string::npos ? ": " + what : " at " + what.substr(at)));
  }
  if (!row.is_object())
    throw DataError(fmt::format("{}:{}: expected a JSON object, found {}", path.string(), line_number, row.type_name()));
  return row;
}

std::string field(const nlohmann::json& row, const std::string& name, const std::filesystem::path& path,
                  int64_t line_number) {
  auto it = row.find(name);
  if (it == row.end())
    throw DataError(fmt::format("{}:{}: field '{}': missing", path.string(), line_number, name));
  if (!it->is_string())
    throw DataError(
        fmt::format("{}:{}: field '{}': expected a string, found {}", path.string(), line_number, name, it->type_name()));
  std::string value = it->get<std::string>();
  if (blank(value)) throw DataError(fmt::format("{}:{}: field '{}': empty", path.string(), line_number, name));
  return value;
}

}  // namespace

std::string detect_schema(const std::filesystem::path& path) {
  std::string schema;
  bool done = false;
  for_each_line(path, [&](int64_t number, std::string_view line) {
    if (done) return;
    done = true;
    auto row = parse_object(path, number, line);
    auto has = [&](const char* k) { return row.contains(k); };
    std::vector<std::string> candidates;
    if (has("prompt") && has("chosen") && has("rejected")) candidates.push_back(has("response") ? "rm-static" : "pairwise");
    if (has("prompt") && has("response") && !has("chosen")) candidates.push_back("sft");
    if (has("text")) candidates.push_back("text");
    std::vector<std::string> keys;
    for (const auto& [k, v] : row.items()) keys.push_back(k);
    if (candidates.size() != 1)
      throw DataError(fmt::format(
          "{}:{}: cannot tell the schema from the fields {{{}}}: {}; declare it with [[data.dataset]] path = ..., "
          "schema = \"rm-static\" | \"pairwise\" | \"sft\" | \"text\" and the *_field names",
          path.string(), number, fmt::join(keys, ", "),
          candidates.empty() ? "they fit none of rm-static (prompt, response, chosen, rejected), pairwise (prompt, "
                               "chosen, rejected), sft (prompt, response), text (text)"
                             : fmt::format("they fit {}", fmt::join(candidates, " and "))));
    schema = candidates.front();
  });
  return schema;
}

std::vector<SourcedExample> parse_dataset(const DatasetSpec& spec, size_t index, int64_t& skipped) {
  std::vector<SourcedExample> rows;
  for_each_line(spec.path, [&](int64_t number, std::string_view line) {
    try {
      auto row = parse_object(spec.path, number, line);
      SourcedExample ex;
      ex.dataset = index;
      ex.line = number;
      if (spec.schema == "rm-static") {
        // The prompt already carries the template; answers start with their own space.
        ex.text.prompt = field(row, spec.prompt_field, spec.path, number);
        ex.sft_answer = field(row, spec.response_field, spec.path, number);
        ex.text.chosen = field(row, spec.chosen_field, spec.path, number);
        ex.text.rejected = field(row, spec.rejected_field, spec.path, number);
      } else if (spec.schema == "pairwise") {
        ex.text.prompt = " Human: " + field(row, spec.prompt_field, spec.path, number) + " Assistant:";
        ex.text.chosen = " " + field(row, spec.chosen_field, spec.path, number);
        ex.text.rejected = " " + field(row, spec.rejected_field, spec.path, number);
        ex.sft_answer = ex.text.chosen;
      } else if (spec.schema == "sft") {
        ex.text.prompt = " Human: " + field(row, spec.prompt_field, spec.path, number) + " Assistant:";
        ex.text.chosen = " " + field(row, spec.response_field, spec.path, number);
        ex.sft_answer = ex.text.chosen;
      } else {
        throw DataError(fmt::format("{}: schema '{}' cannot be a training dataset (text files go to [data].pretraining)",
                                    spec.path.string(), spec.schema));
      }
      // The row's other string and number fields, for what reads them (a rule reward's "answer").
      std::set<std::string> read;
      if (spec.schema == "rm-static")
        read = {spec.prompt_field, spec.response_field, spec.chosen_field, spec.rejected_field};
      else if (spec.schema == "pairwise")
        read = {spec.prompt_field, spec.chosen_field, spec.rejected_field};
      else
        read = {spec.prompt_field, spec.response_field};
      for (const auto& [key, value] : row.items()) {
        if (read.count(key)) continue;
        if (value.is_string()) ex.text.fields.emplace(key, value.get<std::string>());
        else if (value.is_number()) ex.text.fields.emplace(key, value.dump());  // its JSON text: "7", "3.5"
      }
      rows.push_back(std::move(ex));
    } catch (const DataError&) {
      if (!spec.skip_errors || spec.schema == "text") throw;
      ++skipped;
    }
  });
  if (rows.empty()) throw DataError(fmt::format("{}: every row was malformed and skipped ({})", spec.path.string(), skipped));
  return rows;
}

std::vector<std::string> parse_text_file(const DatasetSpec& spec, int64_t& skipped) {
  std::vector<std::string> texts;
  auto ext = spec.path.extension().string();
  bool json = ext == ".jsonl" || ext == ".json";
  for_each_line(spec.path, [&](int64_t number, std::string_view line) {
    if (!json) {
      texts.emplace_back(line);
      return;
    }
    try {
      texts.push_back(field(parse_object(spec.path, number, line), spec.text_field, spec.path, number));
    } catch (const DataError&) {
      if (!spec.skip_errors) throw;
      ++skipped;
    }
  });
  return texts;
}

}  // namespace dschat
