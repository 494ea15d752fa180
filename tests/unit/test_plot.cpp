// `dschat plot RUN_DIR`, run as a user runs it, on metrics.jsonl files in the format the stages write: a figure
// per stage in PNG and SVG, and exit 2 with the file (and line) named for input it cannot draw from.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"

namespace fs = std::filesystem;
using dschat::testing::run_dschat;

namespace {

std::string read_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary) << text;
}

// One row as StageMetrics writes it: {"step","tag","value","time"}, non-finite values as text.
std::string row(int64_t step, const std::string& tag, double value) {
  static double time = 1.7e9;
  nlohmann::json json{{"step", step}, {"tag", tag}, {"value", value}, {"time", time += 0.25}};
  if (!std::isfinite(value)) json["value"] = std::isnan(value) ? "nan" : value > 0 ? "inf" : "-inf";
  return json.dump() + "\n";
}

// The three quickstart stages with the tags each logs (fewer steps).
void write_quickstart_like_run(const fs::path& run) {
  std::string sft = row(0, "data/skipped_rows", 0) + row(0, "data/too_long_skipped", 0);
  for (int s = 1; s <= 40; ++s) {
    sft += row(s, "train/loss", 4.0 * std::exp(-s / 12.0) + 0.3) + row(s, "train/lr", 1e-3 * std::min(1.0, s / 10.0)) +
           row(s, "train/grad_norm", 1.0 + 0.5 * std::sin(s));
    if (s % 10 == 0) sft += row(s, "eval/loss", 4.0 * std::exp(-s / 12.0) + 0.4) +
                            row(s, "eval/perplexity", std::exp(10.0 * std::exp(-s / 12.0) + 0.4));
  }
  sft += row(40, "train/nonfinite_skipped_steps", 0);
  write_file(run / "sft" / "metrics.jsonl", sft);

  std::string rm;
  for (int s = 1; s <= 20; ++s) {
    rm += row(s, "train/loss", 0.7 * std::exp(-s / 8.0)) + row(s, "train/lr", 5e-4);
    if (s % 5 == 0) rm += row(s, "eval/accuracy", 0.5 + s / 45.0) + row(s, "eval/chosen_score", s / 10.0) +
                          row(s, "eval/rejected_score", -s / 10.0);
  }
  write_file(run / "rm" / "metrics.jsonl", rm);

  std::string rlhf;
  for (int s = 0; s <= 12; s += 4)
    rlhf += row(s, "eval/reward", -1 + s / 10.0) + row(s, "eval/kl", s / 20.0) +
            row(s, "eval/ema_reward", -1 + s / 12.0) + row(s, "eval/ema_kl", s / 25.0);
  for (int s = 1; s <= 12; ++s)
    rlhf += row(s, "reward/mean", -1 + s / 9.0) + row(s, "kl/mean", s / 15.0) + row(s, "actor/loss", -0.1 + s / 200.0) +
            row(s, "critic/loss", 0.5 * std::exp(-s / 5.0)) + row(s, "time/generation_s", 1.5);
  rlhf += row(12, "critic/loss", NAN);
  write_file(run / "rlhf" / "metrics.jsonl", rlhf);
}

// A minimal XML reader, enough to show an SVG is well formed: every element closes in order, one root. Returns
// the unescaped text of each element named in `wanted`, or throws on a nesting error.
std::map<std::string, std::string> xml_texts(const std::string& xml, const std::vector<std::string>& wanted) {
  std::map<std::string, std::string> texts;
  std::vector<std::string> open;
  int roots = 0;
  for (size_t at = xml.find('<'); at != std::string::npos;) {
    const size_t end = xml.find('>', at);
    if (end == std::string::npos) throw std::runtime_error("unterminated tag");
    const std::string tag = xml.substr(at + 1, end - at - 1);
    if (tag.empty() || tag[0] == '?' || tag[0] == '!') {
      // declaration or comment
    } else if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1)) throw std::runtime_error("mismatched </" + tag.substr(1) + ">");
      open.pop_back();
    } else {
      const std::string name = tag.substr(0, tag.find_first_of(" \t\n/"));
      if (open.empty()) ++roots;
      if (tag.back() != '/') open.push_back(name);
    }
    const size_t next = xml.find('<', end);
    if (!open.empty() && std::find(wanted.begin(), wanted.end(), open.back()) != wanted.end())
      texts[open.back()] += xml.substr(end + 1, (next == std::string::npos ? xml.size() : next) - end - 1);
    at = next;
  }
  if (!open.empty() || roots != 1) throw std::runtime_error("not one closed root element");
  for (auto& [name, text] : texts)
    for (const auto& [entity, c] : std::vector<std::pair<std::string, std::string>>{
             {"&quot;", "\""}, {"&lt;", "<"}, {"&gt;", ">"}, {"&amp;", "&"}})
      for (size_t p; (p = text.find(entity)) != std::string::npos;) text.replace(p, entity.size(), c);
  return texts;
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

class Plot : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "plot" /
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  fs::path dir_;
};

}  // namespace

TEST_F(Plot, DrawsEachStageAsPngAndSvg) {
  write_quickstart_like_run(dir_);
  auto result = run_dschat("plot " + dir_.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(has(result.output, "rlhf/metrics.jsonl: 1 nan/inf values are not drawn")) << result.output;
  const fs::path plots = dir_ / "plots";
  for (const std::string stage : {"sft", "rm", "rlhf"}) {
    const fs::path png = plots / (stage + ".png"), svg = plots / (stage + ".svg");
    EXPECT_TRUE(has(result.output, png.string())) << result.output;
    EXPECT_TRUE(has(result.output, svg.string())) << result.output;

    const std::string png_bytes = read_file(png);
    EXPECT_EQ(png_bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8)) << png;
    EXPECT_GT(png_bytes.size(), 20000u) << png << ": an image of several panels with curves";

    std::map<std::string, std::string> texts;
    ASSERT_NO_THROW(texts = xml_texts(read_file(svg), {"title", "desc"})) << svg;
    EXPECT_TRUE(has(texts["title"], "stage " + stage)) << texts["title"];
    EXPECT_TRUE(has(texts["desc"], "x axis \"step\"")) << texts["desc"];
    EXPECT_TRUE(has(texts["desc"], "panel \"" + stage + ": ")) << texts["desc"];
  }
  for (const auto& entry : fs::directory_iterator(plots))
    EXPECT_FALSE(has(entry.path().filename().string(), ".tmp-")) << "a temporary was left: " << entry.path();

  // The curves a reader looks for, grouped: train and eval loss share a panel; the actor's reward and its EMA's too.
  const auto sft = xml_texts(read_file(plots / "sft.svg"), {"desc"}).at("desc");
  EXPECT_TRUE(has(sft, "panel \"sft: loss\": x axis \"step\", y axis \"loss\", curves: train/loss, eval/loss")) << sft;
  EXPECT_TRUE(has(sft, "y axis \"eval/perplexity\" (log scale)")) << sft;
  EXPECT_TRUE(has(sft, "logged once: data/skipped_rows = 0 (step 0)")) << sft;
  const auto rm = xml_texts(read_file(plots / "rm.svg"), {"desc"}).at("desc");
  EXPECT_TRUE(has(rm, "y axis \"eval/accuracy\"")) << rm;
  const auto rlhf = xml_texts(read_file(plots / "rlhf.svg"), {"desc"}).at("desc");
  EXPECT_TRUE(has(rlhf, "y axis \"reward\", curves: eval/reward, eval/ema_reward, reward/mean")) << rlhf;
  EXPECT_TRUE(has(rlhf, "y axis \"kl\"")) << rlhf;
  EXPECT_TRUE(has(rlhf, "critic/loss")) << rlhf;
}

TEST_F(Plot, FormatAndOutChooseWhatIsWrittenWhere) {
  write_quickstart_like_run(dir_ / "run");
  auto result = run_dschat("plot " + (dir_ / "run").string() + " --format png --out " + (dir_ / "figures").string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(fs::exists(dir_ / "figures" / "sft.png"));
  EXPECT_FALSE(fs::exists(dir_ / "figures" / "sft.svg"));
  EXPECT_FALSE(fs::exists(dir_ / "run" / "plots"));

  // A stage folder on its own is a run of one stage.
  result = run_dschat("plot " + (dir_ / "run" / "rm").string() + " --format svg");
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(fs::exists(dir_ / "run" / "rm" / "plots" / "rm.svg"));

  result = run_dschat("plot " + (dir_ / "run").string() + " --format jpeg");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(has(result.output, "--format must be png, svg or both, not 'jpeg'")) << result.output;
}

TEST_F(Plot, AMissingRunFolderIsAUsageError) {
  auto result = run_dschat("plot " + (dir_ / "nowhere").string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(has(result.output, (dir_ / "nowhere").string() + ": no such folder")) << result.output;

  result = run_dschat("plot");
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(has(result.output, "usage: dschat plot RUN_DIR")) << result.output;
}

TEST_F(Plot, AFolderWithoutMetricsIsAUsageError) {
  fs::create_directories(dir_ / "sft" / "final");
  auto result = run_dschat("plot " + dir_.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(has(result.output, "no metrics.jsonl in " + dir_.string())) << result.output;
}

TEST_F(Plot, AMalformedLineNamesTheFileAndLine) {
  const fs::path file = dir_ / "sft" / "metrics.jsonl";
  for (const std::string bad : {"{\"step\": 2, \"tag\": \"train/lo", "{\"step\": 2, \"tag\": \"train/loss\"}",
                                "{\"step\": \"two\", \"tag\": \"train/loss\", \"value\": 1}", "[1, 2]",
                                "{\"step\": 2, \"tag\": \"train/loss\", \"value\": \"high\"}"}) {
    write_file(file, row(1, "train/loss", 2.0) + bad + "\n" + row(3, "train/loss", 1.0));
    auto result = run_dschat("plot " + dir_.string());
    EXPECT_EQ(result.exit_code, 2) << bad << "\n" << result.output;
    EXPECT_TRUE(has(result.output, file.string() + ":2: malformed metrics line")) << bad << "\n" << result.output;
  }
  EXPECT_FALSE(fs::exists(dir_ / "plots" / "sft.png"));
}

TEST_F(Plot, ATruncatedLastLineIsReportedAndSkipped) {
  // What a stage stopped in the middle of a write leaves: a last line without its end or its newline.
  const fs::path file = dir_ / "sft" / "metrics.jsonl";
  write_file(file, row(1, "train/loss", 2.0) + row(2, "train/loss", 1.5) + "{\"step\": 3, \"tag\": \"train/lo");
  auto result = run_dschat("plot " + dir_.string());
  ASSERT_EQ(result.exit_code, 0) << result.output;
  EXPECT_TRUE(has(result.output, file.string() + ":3: truncated last line")) << result.output;
  EXPECT_TRUE(fs::exists(dir_ / "plots" / "sft.png"));
}

TEST_F(Plot, NoNumericMetricsIsAUsageError) {
  write_file(dir_ / "sft" / "metrics.jsonl", row(1, "train/loss", NAN) + row(2, "train/loss", INFINITY));
  write_file(dir_ / "rm" / "metrics.jsonl", "");
  auto result = run_dschat("plot " + dir_.string());
  EXPECT_EQ(result.exit_code, 2) << result.output;
  EXPECT_TRUE(has(result.output, "no numeric metrics to draw in")) << result.output;
  EXPECT_TRUE(has(result.output, (dir_ / "sft" / "metrics.jsonl").string())) << result.output;
  EXPECT_TRUE(has(result.output, (dir_ / "rm" / "metrics.jsonl").string())) << result.output;
}
