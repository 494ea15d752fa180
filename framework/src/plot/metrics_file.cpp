#include "metrics_file.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace fs = std::filesystem;

namespace dschat::plot {
namespace {

struct Row {
  int64_t step = 0;
  std::string tag;
  double value = 0;
  double time = 0;
};

// StageMetrics writes a non-finite value as fmt's text of it, since JSON has no nan/inf.
std::optional<double> nonfinite_from_text(const std::string& text) {
  if (text == "nan" || text == "-nan") return std::numeric_limits<double>::quiet_NaN();
  if (text == "inf") return std::numeric_limits<double>::infinity();
  if (text == "-inf") return -std::numeric_limits<double>::infinity();
  return std::nullopt;
}

// Why a line is not a row.
struct RowError {
  std::string what;
};

Row parse_row(const std::string& line) {
  auto json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) throw RowError{"not valid JSON"};
  if (!json.is_object()) throw RowError{"expected a JSON object"};
  Row row;
  auto step = json.find("step");
  if (step == json.end() || !step->is_number_integer()) throw RowError{"\"step\" must be an integer"};
  row.step = step->get<int64_t>();
  auto tag = json.find("tag");
  if (tag == json.end() || !tag->is_string() || tag->get<std::string>().empty())
    throw RowError{"\"tag\" must be a non-empty string"};
  row.tag = tag->get<std::string>();
  auto value = json.find("value");
  std::optional<double> nonfinite;
  if (value != json.end() && value->is_string()) nonfinite = nonfinite_from_text(value->get<std::string>());
  if (value != json.end() && value->is_number())
    row.value = value->get<double>();
  else if (nonfinite)
    row.value = *nonfinite;
  else
    throw RowError{fmt::format("\"value\" must be a number (or \"nan\"/\"inf\"), found {}",
                               value == json.end() ? "nothing" : value->dump())};
  auto time = json.find("time");
  if (time != json.end() && time->is_number()) row.time = time->get<double>();
  return row;
}

std::string read_whole_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw PlotInputError(fmt::format("cannot read {}", file.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::vector<fs::path> find_metrics_files(const fs::path& run_dir) {
  std::error_code ec;
  if (!fs::exists(run_dir, ec)) throw PlotInputError(fmt::format("{}: no such folder", run_dir.string()));
  if (!fs::is_directory(run_dir, ec)) throw PlotInputError(fmt::format("{}: not a folder", run_dir.string()));
  std::vector<fs::path> files;
  if (fs::is_regular_file(run_dir / "metrics.jsonl", ec)) files.push_back(run_dir / "metrics.jsonl");
  std::vector<fs::path> stage_files;
  for (const auto& entry : fs::directory_iterator(run_dir, ec))
    if (entry.is_directory() && fs::is_regular_file(entry.path() / "metrics.jsonl"))
      stage_files.push_back(entry.path() / "metrics.jsonl");
  std::sort(stage_files.begin(), stage_files.end());
  files.insert(files.end(), stage_files.begin(), stage_files.end());
  if (files.empty())
    throw PlotInputError(fmt::format("no metrics.jsonl in {} or in its stage folders ({}/<stage>/metrics.jsonl)",
                                     run_dir.string(), run_dir.string()));
  return files;
}

StageHistory read_stage_history(const fs::path& file, const std::string& stage) {
  StageHistory history;
  history.stage = stage;
  history.file = file;
  history.first_time = std::numeric_limits<double>::infinity();
  const std::string text = read_whole_file(file);
  std::map<std::string, size_t> index_of_tag;
  std::vector<std::map<int64_t, double>> values_by_step;  // a resumed attempt's row replaces an earlier one
  size_t line_number = 0;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    const bool terminated = end != std::string::npos;
    if (!terminated) end = text.size();
    const std::string line = text.substr(begin, end - begin);
    begin = end + 1;
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Row row;
    try {
      row = parse_row(line);
    } catch (const RowError& e) {
      if (terminated)
        throw PlotInputError(fmt::format("{}:{}: malformed metrics line: {}", file.string(), line_number, e.what));
      history.warnings.push_back(fmt::format("{}:{}: truncated last line ({}; the stage stopped while writing "
                                             "it?), skipped", file.string(), line_number, e.what));
      continue;
    }
    history.first_time = std::min(history.first_time, row.time);
    if (!std::isfinite(row.value)) {
      ++history.nonfinite_values;
      continue;
    }
    auto [it, added] = index_of_tag.emplace(row.tag, history.series.size());
    if (added) {
      history.series.push_back({row.tag, {}});
      values_by_step.emplace_back();
    }
    values_by_step[it->second][row.step] = row.value;
  }
  for (size_t i = 0; i < history.series.size(); ++i)
    for (const auto& [step, value] : values_by_step[i]) history.series[i].points.push_back({step, value});
  return history;
}

}  // namespace dschat::plot
