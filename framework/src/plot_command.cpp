// `dschat plot RUN_DIR`: each stage's metrics.jsonl drawn as one figure (PNG and/or SVG) of step curves.
#include <algorithm>
#include <cctype>
#include <iostream>

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "command_support.h"
#include "dschat/framework/cli.h"
#include "plot/figure_layout.h"
#include "plot/metrics_file.h"
#include "plot/plplot_figure.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace dschat {
namespace {

using plot::ImageFormat;
using plot::PlotInputError;
using plot::StageHistory;

constexpr const char* kSynopsis = "RUN_DIR [--out DIR] [--format png|svg|both]";

std::vector<ImageFormat> formats_named(const std::string& name) {
  if (name == "png") return {ImageFormat::png};
  if (name == "svg") return {ImageFormat::svg};
  if (name == "both") return {ImageFormat::png, ImageFormat::svg};
  throw PlotInputError(fmt::format("--format must be png, svg or both, not '{}'", name));
}

// The stage a metrics file belongs to: its folder's name (RUN_DIR itself when given a stage folder).
std::string stage_name_of(const fs::path& metrics_file) {
  return fs::absolute(metrics_file).lexically_normal().parent_path().filename().string();
}

// A stage name as a file name: anything but letters, digits, '.', '-' and '_' becomes '_'.
std::string file_stem_for(const std::string& stage) {
  std::string stem = stage;
  for (char& c : stem)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != '_') c = '_';
  return stem.empty() ? "stage" : stem;
}

// Every stage with something to draw, in the order the stages ran; warnings go to stderr.
std::vector<StageHistory> read_run(const fs::path& run_dir) {
  std::vector<StageHistory> stages;
  std::vector<std::string> empty_files;
  for (const auto& file : plot::find_metrics_files(run_dir)) {
    StageHistory history = plot::read_stage_history(file, stage_name_of(file));
    for (const auto& warning : history.warnings) std::cerr << "dschat plot: warning: " << warning << "\n";
    if (history.nonfinite_values > 0)
      std::cerr << fmt::format("dschat plot: warning: {}: {} nan/inf values are not drawn\n", file.string(),
                               history.nonfinite_values);
    if (history.series.empty()) {
      empty_files.push_back(file.string());
      continue;
    }
    stages.push_back(std::move(history));
  }
  if (stages.empty())
    throw PlotInputError(fmt::format("no numeric metrics to draw in {}", fmt::join(empty_files, ", ")));
  for (const auto& file : empty_files)
    std::cerr << "dschat plot: warning: " << file << ": no numeric metrics, skipped\n";
  std::stable_sort(stages.begin(), stages.end(), [](const StageHistory& a, const StageHistory& b) {
    return a.first_time < b.first_time;
  });
  return stages;
}

// Draws every stage's figure in each format, printing the files as they are written.
void draw_run(const std::vector<StageHistory>& stages, const std::vector<ImageFormat>& formats,
              const fs::path& out_dir) {
  fs::create_directories(out_dir);
  for (const auto& stage : stages) {
    const plot::Figure figure = plot::lay_out_figure(stage);
    for (ImageFormat format : formats) {
      const fs::path file = out_dir / (file_stem_for(stage.stage) + "." + plot::extension_of(format));
      plot::draw_figure(figure, stage.file.string(), format, file);
      std::cout << file.string() << std::endl;
    }
  }
}

int plot_command(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("run-dir", po::value<std::string>()->required(), "run folder (or one stage's folder)")(
      "out", po::value<std::string>(), "where the figures go (default RUN_DIR/plots)")(
      "format", po::value<std::string>()->default_value("both"), "png, svg or both");
  po::positional_options_description positional;
  positional.add("run-dir", 1);
  return run_guarded("plot", [&] {
    auto vm = parse_flags("plot", options, positional, args, kSynopsis);
    if (!vm) return 0;
    const fs::path run_dir = (*vm)["run-dir"].as<std::string>();
    const fs::path out_dir = vm->count("out") ? fs::path((*vm)["out"].as<std::string>()) : run_dir / "plots";
    std::vector<ImageFormat> formats;
    std::vector<StageHistory> stages;
    try {
      formats = formats_named((*vm)["format"].as<std::string>());
      stages = read_run(run_dir);
    } catch (const PlotInputError& e) {
      throw CommandError(e.what());  // exit 2
    }
    draw_run(stages, formats, out_dir);  // a failure here is not the input's: exit 1
    return 0;
  });
}

const bool registered = [] {
  extra_commands()["plot"] = plot_command;
  return true;
}();

}  // namespace
}  // namespace dschat
