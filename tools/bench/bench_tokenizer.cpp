// Times dschat::Tokenizer::encode, one line at a time on one thread, over a JSONL corpus (one JSON string a line).
// Driven by tools/bench/bench_tokenizer.py, which times HF tokenizers on the same lines in the same run.
//   bench_tokenizer <tokenizer.json> <corpus.jsonl> <passes>
// Prints one JSON object: lines, passes, tokens (of one pass), seconds (all passes, first included).
#include <dschat/sdk/tokenizer.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: bench_tokenizer <tokenizer.json> <corpus.jsonl> <passes>\n";
    return 2;
  }
  try {
    auto tok = dschat::Tokenizer::from_file(argv[1]);
    std::ifstream in(argv[2]);
    if (!in) throw std::runtime_error(std::string(argv[2]) + ": cannot open");
    std::vector<std::string> lines;
    for (std::string row; std::getline(in, row);) lines.push_back(nlohmann::json::parse(row).get<std::string>());
    const int passes = std::stoi(argv[3]);
    std::size_t tokens = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (int p = 0; p < passes; ++p) {
      std::size_t n = 0;
      for (const auto& line : lines) n += tok->encode(line, true).size();
      tokens = n;
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::cout << nlohmann::json{{"lines", lines.size()}, {"passes", passes}, {"tokens", tokens}, {"seconds", s}}.dump()
              << "\n";
  } catch (const std::exception& e) {
    std::cerr << "bench_tokenizer: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
