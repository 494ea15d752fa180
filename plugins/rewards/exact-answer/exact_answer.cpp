// `exact-answer`: a rule reward for tasks with one right answer (GSM8K-style math, short facts). Each row scores
// `correct` when its generated answer matches the row's data field, else `wrong`.
//
// Matching:
//   - with `pattern` (an ECMAScript regular expression): its first match in the answer; the first capture group
//     when the pattern has one, else the whole match; compared as a string with the field, both trimmed of
//     surrounding white space. No match: wrong.
//   - without it: the last number in the answer (an integer or decimal with an optional sign; thousands
//     separators as in "1,000" are dropped), compared numerically with the field, so "7.0" matches "7". No
//     number in the answer, or a field that is not a number: wrong.
//
// Options: field ("answer": the data row's field, a string or number in the JSONL row), correct (1.0),
// wrong (0.0), pattern (none). Every row of the stage's data must carry the field (`dschat validate` checks).
#include <cctype>
#include <cstdlib>
#include <memory>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ops/tensor.h>
#include <fmt/format.h>

#include "dschat/sdk/plugin.h"
#include "dschat/sdk/reward.h"

namespace {

using namespace dschat;

std::string trim(const std::string& s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return "";
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

// `text` as a number when the whole of it (trimmed, thousands separators dropped) is one.
std::optional<double> as_number(std::string text) {
  text = trim(text);
  std::string digits;
  for (char c : text)
    if (c != ',') digits += c;
  if (digits.empty()) return std::nullopt;
  char* end = nullptr;
  const double value = std::strtod(digits.c_str(), &end);
  if (end != digits.c_str() + digits.size()) return std::nullopt;
  return value;
}

// The last number in `answer`, as written (sign, digits, separators, decimals); nullopt when there is none. A sign
// counts only where it starts a number, not in "x-7" (there "7" is the number).
std::optional<std::string> last_number(const std::string& answer) {
  static const std::regex number(R"([-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)");
  std::optional<std::string> last;
  for (auto it = std::sregex_iterator(answer.begin(), answer.end(), number); it != std::sregex_iterator(); ++it) {
    std::string text = it->str();
    const auto at = static_cast<size_t>(it->position());
    if ((text[0] == '-' || text[0] == '+') && at > 0 && std::isalnum(static_cast<unsigned char>(answer[at - 1])))
      text.erase(0, 1);
    last = text;
  }
  return last;
}

class ExactAnswer : public RewardFunction {
 public:
  explicit ExactAnswer(const ConfigTable& table)
      : field_(table.get_string("field", "answer")),
        correct_(table.get_float("correct", 1.0)),
        wrong_(table.get_float("wrong", 0.0)) {
    if (field_.empty()) table.fail("field", "must name a data field, e.g. \"answer\"");
    if (table.has("pattern")) {
      const std::string pattern = table.get_string("pattern");
      try {
        pattern_.emplace(pattern, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        table.fail("pattern", fmt::format("not a valid ECMAScript regular expression: {}", e.what()));
      }
    }
  }

  std::vector<std::string> required_fields() const override { return {field_}; }

  at::Tensor score(const RewardBatch& batch) override {
    if (batch.examples.size() != batch.answers.size())
      throw std::invalid_argument(fmt::format("exact-answer: {} answers but {} data rows", batch.answers.size(),
                                              batch.examples.size()));
    std::vector<float> scores;
    scores.reserve(batch.answers.size());
    for (size_t i = 0; i < batch.answers.size(); ++i) {
      const TextExample* example = batch.examples[i];
      if (example == nullptr)
        throw std::invalid_argument(fmt::format(
            "exact-answer: row {} has no data row to read the field '{}' from (the algorithm passed none)", i, field_));
      auto it = example->fields.find(field_);
      if (it == example->fields.end())
        throw std::invalid_argument(fmt::format("exact-answer: row {}'s data row has no field '{}' (its prompt: \"{}\")",
                                                i, field_, example->prompt.substr(0, 80)));
      scores.push_back(static_cast<float>(matches(batch.answers[i], it->second) ? correct_ : wrong_));
    }
    auto out = at::tensor(scores, at::kFloat);
    return batch.sequences.defined() ? out.to(batch.sequences.device()) : out;
  }

 private:
  bool matches(const std::string& answer, const std::string& expected) const {
    if (pattern_) {
      std::smatch m;
      if (!std::regex_search(answer, m, *pattern_)) return false;
      const std::string found = m.size() > 1 ? m[1].str() : m[0].str();
      return trim(found) == trim(expected);
    }
    const auto number = last_number(answer);
    if (!number) return false;
    const auto got = as_number(*number), want = as_number(expected);
    return got && want && *got == *want;
  }

  std::string field_;
  double correct_, wrong_;
  std::optional<std::regex> pattern_;
};

}  // namespace

DSCHAT_PLUGIN("exact-answer", "0.1.0", "rule reward: the answer's last number (or a pattern's match) against a data field") {
  registrar.add<dschat::RewardFunction>(
      "exact-answer", "correct / wrong by the row's answer field (last number, or a regex capture)",
      [](const dschat::ConfigTable& options) { return std::make_shared<ExactAnswer>(options); });
}
