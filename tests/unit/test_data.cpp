// Datasets: DeepSpeed-Chat's split and permutation, the schemas, collate shapes, the tokenized cache, and every
// malformed-input case with its file:line: field message.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "dschat/framework/data.h"
#include "dschat/sdk/data_collate.h"
#include "dschat/sdk/tokenizer.h"

using namespace dschat;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("dschat-test-data-" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path write(const fs::path& file, const std::string& text) {
  std::ofstream(file, std::ios::binary) << text;
  return file;
}

// n rm-static rows whose prompt names the row, so a phase's examples can be traced back to rows.
std::string rm_static_rows(int n) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += "{\"prompt\": \" Human: q" + std::to_string(i) + " Assistant:\", \"response\": \" r" + std::to_string(i) +
           "\", \"chosen\": \" good" + std::to_string(i) + "\", \"rejected\": \" bad" + std::to_string(i) + "\"}\n";
  return out;
}

DatasetSpec dataset(const fs::path& path, const std::string& schema, bool skip = false) {
  DatasetSpec d;
  d.path = path;
  d.schema = schema;
  d.skip_errors = skip;
  return d;
}

DataSpec one(const DatasetSpec& d, double eval_fraction = 0.1) {
  DataSpec spec;
  spec.datasets = {d};
  spec.eval_fraction = eval_fraction;
  return spec;
}

std::shared_ptr<Tokenizer> quickstart_tokenizer() {
  return Tokenizer::from_dir(fs::path(DSCHAT_SOURCE_DIR) / "configs/quickstart/model");
}

// Expects `fn` to throw DataError whose message contains every part.
template <class Fn>
void expect_data_error(Fn&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a DataError";
  } catch (const DataError& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << p << "\nin: " << e.what();
  }
}

}  // namespace

TEST(DataSplit, PermutationIsNumpyRandomStateShuffle) {
  auto perm = numpy_permutation(1234, 37);
  std::string expected_text =
      dschat::testing::run_command(std::string(DSCHAT_TEST_PYTHON) +
                                   " -c \"import numpy as np; a = np.arange(37); np.random.RandomState(1234).shuffle(a);"
                                   " print(' '.join(map(str, a)))\"")
          .output;
  std::string ours;
  for (auto v : perm) ours += (ours.empty() ? "" : " ") + std::to_string(v);
  EXPECT_EQ(ours + "\n", expected_text);
}

TEST(DataSplit, BoundariesFollowDeepSpeedChat) {
  EXPECT_EQ(split_boundaries({2, 4, 4}, 10), (std::vector<int64_t>{0, 2, 6, 10}));
  EXPECT_EQ(split_boundaries({2, 4, 4}, 7), (std::vector<int64_t>{0, 1, 4, 7}));
  // round() is half-to-even and the excess is taken off every boundary after the first, as DeepSpeed-Chat does.
  EXPECT_EQ(split_boundaries({1, 1}, 5), (std::vector<int64_t>{0, 3, 5}));
  EXPECT_EQ(split_boundaries({10, 0, 0}, 9), (std::vector<int64_t>{0, 9, 9, 9}));
}

TEST(DataSplit, PhasesAreDisjointDeterministicAndSized) {
  auto dir = temp_dir("split");
  auto file = write(dir / "rows.jsonl", rm_static_rows(100));
  HostDataSource a(one(dataset(file, "rm-static")), 42, dir / "cache");
  HostDataSource b(one(dataset(file, "rm-static")), 42, dir / "cache");
  HostDataSource c(one(dataset(file, "rm-static")), 43, dir / "cache");
  std::set<std::string> seen;
  size_t expected_sizes[3][2] = {{18, 2}, {36, 4}, {36, 4}};  // 90 train / 10 eval, each split 2/4/4
  for (auto phase : {Phase::sft, Phase::reward, Phase::ppo})
    for (bool eval : {false, true}) {
      const auto& ex = a.examples(phase, eval);
      EXPECT_EQ(ex.size(), expected_sizes[static_cast<int>(phase)][eval]);
      for (const auto& e : ex) EXPECT_TRUE(seen.insert(e.prompt).second) << "in two parts: " << e.prompt;
      ASSERT_EQ(ex.size(), b.examples(phase, eval).size());
      for (size_t i = 0; i < ex.size(); ++i) EXPECT_EQ(ex[i].prompt, b.examples(phase, eval)[i].prompt);
    }
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_NE(a.examples(Phase::ppo, false)[0].prompt + a.examples(Phase::ppo, false)[1].prompt,
            c.examples(Phase::ppo, false)[0].prompt + c.examples(Phase::ppo, false)[1].prompt);
}

TEST(DataSplit, SeveralDatasetsAreBlended) {
  auto dir = temp_dir("blend");
  auto first = write(dir / "a.jsonl", rm_static_rows(50));
  auto second = write(dir / "b.jsonl",
                      "{\"prompt\": \"x\", \"chosen\": \"y\", \"rejected\": \"z\"}\n"
                      "{\"prompt\": \"x2\", \"chosen\": \"y2\", \"rejected\": \"z2\"}\n"
                      "{\"prompt\": \"x3\", \"chosen\": \"y3\", \"rejected\": \"z3\"}\n"
                      "{\"prompt\": \"x4\", \"chosen\": \"y4\", \"rejected\": \"z4\"}\n"
                      "{\"prompt\": \"x5\", \"chosen\": \"y5\", \"rejected\": \"z5\"}\n");
  DataSpec spec;
  spec.datasets = {dataset(first, "rm-static"), dataset(second, "pairwise")};
  spec.split = {0, 0, 1};
  spec.eval_fraction = 0;
  HostDataSource source(spec, 1, dir / "cache");
  const auto& ppo = source.examples(Phase::ppo, false);
  ASSERT_EQ(ppo.size(), 55u);
  int pairwise = 0;
  for (const auto& e : ppo) pairwise += e.prompt.rfind(" Human: x", 0) == 0;
  EXPECT_EQ(pairwise, 5);
  EXPECT_TRUE(source.examples(Phase::sft, false).empty());
}

TEST(DataSchema, RmStaticKeepsThePromptAndTrainsSftOnTheResponse) {
  auto dir = temp_dir("rm-static");
  auto file = write(dir / "rows.jsonl", rm_static_rows(10));
  EXPECT_EQ(detect_schema(file), "rm-static");
  DataSpec spec = one(dataset(file, "rm-static"), 0);
  spec.split = {1, 1, 0};
  HostDataSource source(spec, 1, dir / "cache");
  for (const auto& e : source.examples(Phase::sft, false)) {
    auto i = e.prompt.substr(9, e.prompt.find(' ', 9) - 9);  // " Human: q<i> Assistant:"
    EXPECT_EQ(e.prompt, " Human: q" + i + " Assistant:");
    EXPECT_EQ(e.chosen, " r" + i);
  }
  for (const auto& e : source.examples(Phase::reward, false)) {
    auto i = e.prompt.substr(9, e.prompt.find(' ', 9) - 9);
    EXPECT_EQ(e.chosen, " good" + i);
    EXPECT_EQ(e.rejected, " bad" + i);
  }
}

TEST(DataSchema, PairwiseAndSftApplyTheChatTemplate) {
  auto dir = temp_dir("template");
  auto pairs = write(dir / "pairs.jsonl", "{\"prompt\": \"hi\", \"chosen\": \"hello\", \"rejected\": \"go away\"}\n");
  auto sft = write(dir / "sft.jsonl", "{\"prompt\": \"hi\", \"response\": \"hello there\"}\n");
  EXPECT_EQ(detect_schema(pairs), "pairwise");
  EXPECT_EQ(detect_schema(sft), "sft");
  DataSpec p = one(dataset(pairs, "pairwise"), 0);
  p.split = {0, 1, 0};
  HostDataSource ps(p, 1, dir / "cache");
  ASSERT_EQ(ps.examples(Phase::reward, false).size(), 1u);
  const auto& e = ps.examples(Phase::reward, false)[0];
  EXPECT_EQ(e.prompt, " Human: hi Assistant:");
  EXPECT_EQ(e.chosen, " hello");
  EXPECT_EQ(e.rejected, " go away");
  // Single-answer data goes to step 1 only, whatever the split (DeepSpeed-Chat's sft_only_data_path).
  HostDataSource ss(one(dataset(sft, "sft"), 0), 1, dir / "cache");
  ASSERT_EQ(ss.examples(Phase::sft, false).size(), 1u);
  EXPECT_EQ(ss.examples(Phase::sft, false)[0].chosen, " hello there");
  EXPECT_TRUE(ss.examples(Phase::sft, false)[0].rejected.empty());
  EXPECT_TRUE(ss.examples(Phase::reward, false).empty());
}

TEST(DataSchema, AmbiguousOrUnknownFieldsAreErrors) {
  auto dir = temp_dir("detect");
  auto both = write(dir / "both.jsonl", "{\"prompt\": \"a\", \"response\": \"b\", \"text\": \"c\"}\n");
  expect_data_error([&] { detect_schema(both); }, {"both.jsonl:1:", "they fit sft and text", "schema ="});
  auto none = write(dir / "none.jsonl", "{\"question\": \"a\", \"answer\": \"b\"}\n");
  expect_data_error([&] { detect_schema(none); }, {"none.jsonl:1:", "{answer, question}", "fit none"});
}

TEST(DataSchema, PretrainingTextFromJsonlOrLines) {
  auto dir = temp_dir("text");
  DataSpec spec;
  spec.pretraining = {dataset(write(dir / "a.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n"), "text"),
                      dataset(write(dir / "b.txt", "three\n\nfour\n"), "text")};
  HostDataSource source(spec, 1, dir / "cache");
  EXPECT_EQ(source.pretraining_texts(), (std::vector<std::string>{"one", "two", "three", "four"}));
}

TEST(DataMalformed, EveryCaseNamesFileLineAndField) {
  auto dir = temp_dir("malformed");
  std::string good = "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n";
  auto load = [&](const std::string& name, const std::string& text) {
    auto file = write(dir / name, text);
    return [file] {
      int64_t skipped = 0;
      parse_dataset(dataset(file, "pairwise"), 0, skipped);
    };
  };
  expect_data_error(load("json.jsonl", good + good + "{\"prompt\": \"p\", \"chosen\": \n"),
                    {"json.jsonl:3: invalid JSON at column"});
  expect_data_error(load("missing.jsonl", good + "{\"prompt\": \"p\", \"rejected\": \"r\"}\n"),
                    {"missing.jsonl:2: field 'chosen': missing"});
  expect_data_error(load("type.jsonl", "{\"prompt\": \"p\", \"chosen\": 3, \"rejected\": \"r\"}\n"),
                    {"type.jsonl:1: field 'chosen': expected a string, found number"});
  expect_data_error(load("array.jsonl", "[1, 2]\n"), {"array.jsonl:1: expected a JSON object, found array"});
  expect_data_error(load("empty.jsonl", ""), {"empty.jsonl: empty file"});
  expect_data_error(load("blank.jsonl", "\n  \n"), {"blank.jsonl: empty file"});
  expect_data_error(load("emptyfield.jsonl", "{\"prompt\": \"\", \"chosen\": \"c\", \"rejected\": \"r\"}\n"),
                    {"emptyfield.jsonl:1: field 'prompt': empty"});
  expect_data_error([&] { detect_schema(write(dir / "e2.jsonl", "")); }, {"e2.jsonl: empty file"});
}

TEST(DataMalformed, SkipModeCountsBadRows) {
  auto dir = temp_dir("skip");
  auto file = write(dir / "rows.jsonl", rm_static_rows(20) + "not json\n{\"prompt\": 1}\n" + rm_static_rows(1));
  int64_t skipped = 0;
  auto rows = parse_dataset(dataset(file, "rm-static", true), 0, skipped);
  EXPECT_EQ(rows.size(), 21u);
  EXPECT_EQ(skipped, 2);
  EXPECT_EQ(rows.back().line, 23);
  HostDataSource source(one(dataset(file, "rm-static", true)), 1, dir / "cache");
  source.examples(Phase::sft, false);
  EXPECT_EQ(source.counts().skipped_rows, 2);
  expect_data_error([&] { parse_dataset(dataset(file, "rm-static"), 0, skipped); }, {"rows.jsonl:21: invalid JSON"});
}

TEST(DataMalformed, PromptWithNoRoomForAnAnswer) {
  auto tok = quickstart_tokenizer();
  auto dir = temp_dir("long");
  std::string long_prompt(200, 'x');
  auto file = write(dir / "rows.jsonl", rm_static_rows(9) + "{\"prompt\": \" Human: " + long_prompt +
                                            " Assistant:\", \"response\": \" r\", \"chosen\": \" c\", "
                                            "\"rejected\": \" r\"}\n");
  DataSpec spec = one(dataset(file, "rm-static"), 0);
  spec.split = {1, 0, 0};
  spec.max_seq_len = 32;
  spec.max_prompt_seq_len = 16;
  HostDataSource failing(spec, 1, dir / "cache");
  expect_data_error([&] { failing.tokenized(Phase::sft, false, *tok); },
                    {"rows.jsonl:10: field 'prompt':", "no room for the answer", "max_seq_len = 32"});
  spec.datasets[0].skip_errors = true;
  HostDataSource skipping(spec, 1, dir / "cache");
  EXPECT_EQ(skipping.tokenized(Phase::sft, false, *tok).size(), 9u);
  EXPECT_EQ(skipping.counts().too_long_skipped, 1);
  // In step 3 a long prompt is dropped and counted, as DeepSpeed-Chat does, even without on_error = "skip".
  spec.datasets[0].skip_errors = false;
  spec.split = {0, 0, 1};
  HostDataSource ppo(spec, 1, dir / "cache");
  EXPECT_EQ(ppo.tokenized(Phase::ppo, false, *tok).size(), 9u);
  EXPECT_EQ(ppo.counts().ppo_prompts_dropped, 1);
}

TEST(DataCollate, SftPairAndPromptBatches) {
  auto tok = quickstart_tokenizer();
  int64_t eos = *tok->eos_id(), pad = *tok->pad_id();
  TextExample a{" Human: Greet me. Assistant:", " Hello! Nice to meet you.", " Go away."};
  TextExample b{" Human: Count to 3. Assistant:", " 1, 2, 3.", " 1 1 1 1 1"};
  auto ta = tokenize_example(*tok, a, 64), tb = tokenize_example(*tok, b, 64);
  EXPECT_EQ(ta.chosen, [&] {
    auto ids = tok->encode(a.prompt + a.chosen);
    ids.push_back(eos);
    return ids;
  }());
  EXPECT_EQ(ta.prompt, tok->encode(a.prompt));
  EXPECT_EQ(ta.chosen.back(), eos);
  EXPECT_EQ(ta.rejected.back(), eos);

  auto sft = collate_sft({&ta, &tb}, 64, pad);
  EXPECT_EQ(sft.input_ids.sizes(), (std::vector<int64_t>{2, 64}));
  auto len = static_cast<int64_t>(ta.chosen.size());
  EXPECT_EQ(sft.attention_mask[0].sum().item<int64_t>(), len);
  EXPECT_EQ(sft.input_ids[0][len - 1].item<int64_t>(), eos);
  EXPECT_EQ(sft.input_ids[0][len].item<int64_t>(), pad);
  EXPECT_EQ(sft.labels[0][len - 1].item<int64_t>(), eos);  // the eos is learned
  EXPECT_EQ(sft.labels[0][len].item<int64_t>(), -100);      // padding is not
  EXPECT_EQ(sft.labels[0][1].item<int64_t>(), ta.chosen[1]);  // the prompt is trained on, as in DeepSpeed-Chat

  auto pairs = collate_pairs({&ta, &tb}, 64, pad);
  EXPECT_EQ(pairs.input_ids.sizes(), (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(pairs.pairs, 2);
  EXPECT_EQ(pairs.attention_mask[1].sum().item<int64_t>(), static_cast<int64_t>(tb.chosen.size()));
  EXPECT_EQ(pairs.attention_mask[2].sum().item<int64_t>(), static_cast<int64_t>(ta.rejected.size()));
  EXPECT_EQ(pairs.input_ids[3][static_cast<int64_t>(tb.rejected.size()) - 1].item<int64_t>(), eos);

  TokenizedExample long_prompt;
  long_prompt.prompt.assign(20, 5);
  auto prompts = collate_prompts({&ta, &long_prompt, &tb}, 16, pad);
  EXPECT_EQ(prompts.dropped, 1);
  EXPECT_EQ(prompts.kept, (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(prompts.input_ids.sizes(), (std::vector<int64_t>{2, 16}));
  auto plen = static_cast<int64_t>(ta.prompt.size());
  EXPECT_EQ(prompts.input_ids[0][15].item<int64_t>(), ta.prompt.back());  // left-padded: the prompt ends the row
  EXPECT_EQ(prompts.attention_mask[0][16 - plen - 1].item<int64_t>(), 0);
  EXPECT_EQ(prompts.attention_mask[0][16 - plen].item<int64_t>(), 1);

  TokenizedExample no_rejected = ta;
  no_rejected.rejected.clear();
  EXPECT_THROW(collate_pairs({&no_rejected}, 64, pad), std::invalid_argument);
  // Truncation keeps the first max_seq_len tokens (DeepSpeed-Chat truncates too).
  EXPECT_EQ(tokenize_example(*tok, a, 4).chosen, std::vector<int64_t>(ta.chosen.begin(), ta.chosen.begin() + 4));
}

TEST(DataCache, ReusedAndInvalidated) {
  auto tok = quickstart_tokenizer();
  auto dir = temp_dir("cache");
  auto file = write(dir / "rows.jsonl", rm_static_rows(30));
  DataSpec spec = one(dataset(file, "rm-static"));
  auto run = [&](const DataSpec& s, const std::shared_ptr<Tokenizer>& t) {
    HostDataSource source(s, 7, dir / "cache");
    auto ids = source.tokenized(Phase::reward, false, *t);
    return std::make_pair(ids, source.counts());
  };
  auto [first, c1] = run(spec, tok);
  EXPECT_EQ(c1.cache_misses, 1);
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir / "cache")) files += entry.path().extension() == ".bin";
  EXPECT_EQ(files, 1u);
  auto [second, c2] = run(spec, tok);
  EXPECT_EQ(c2.cache_hits, 1);
  ASSERT_EQ(first.size(), second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(first[i].chosen, second[i].chosen);
    EXPECT_EQ(first[i].rejected, second[i].rejected);
  }
  // Anything that changes the tokens changes the key: a limit, the split, the seed-carrying data, the tokenizer.
  DataSpec longer = spec;
  longer.max_seq_len = 128;
  EXPECT_EQ(run(longer, tok).second.cache_misses, 1);
  DataSpec other_split = spec;
  other_split.split = {1, 1, 1};
  EXPECT_EQ(run(other_split, tok).second.cache_misses, 1);
  write(file, rm_static_rows(31));
  EXPECT_EQ(run(spec, tok).second.cache_misses, 1);
  auto tok_dir = dir / "tok";
  fs::create_directories(tok_dir);
  fs::copy_file(tok->source(), tok_dir / "tokenizer.json");
  fs::copy_file(tok->source().parent_path() / "tokenizer_config.json", tok_dir / "tokenizer_config.json");
  EXPECT_EQ(run(spec, Tokenizer::from_dir(tok_dir)).second.cache_hits, 1);  // same bytes: same key
  std::ofstream(tok_dir / "tokenizer.json", std::ios::app) << "\n";
  EXPECT_EQ(run(spec, Tokenizer::from_dir(tok_dir)).second.cache_misses, 1);
  // A damaged cache file is rebuilt, not trusted.
  for (const auto& entry : fs::directory_iterator(dir / "cache")) fs::resize_file(entry.path(), 40);
  auto [rebuilt, c3] = run(spec, tok);
  EXPECT_EQ(c3.cache_misses, 1);
  EXPECT_FALSE(rebuilt.empty());
}

// A row's other string and number fields reach TextExample::fields (numbers as their JSON text); the schema's own
// fields and other JSON types do not.
TEST(DataFields, OtherStringAndNumberFieldsAreKept) {
  auto dir = temp_dir("fields");
  auto file = write(dir / "rows.jsonl",
                    "{\"prompt\": \"2+5?\", \"chosen\": \"7\", \"rejected\": \"8\", \"answer\": 7, \"level\": 3.5, "
                    "\"source\": \"gsm8k\", \"ok\": true, \"tags\": [1], \"meta\": {\"a\": 1}, \"none\": null}\n");
  DataSpec spec = one(dataset(file, "pairwise"), 0);
  spec.split = {0, 0, 1};
  HostDataSource source(spec, 1, dir / "cache");
  ASSERT_EQ(source.examples(Phase::ppo, false).size(), 1u);
  const auto& fields = source.examples(Phase::ppo, false)[0].fields;
  const std::map<std::string, std::string> expected = {{"answer", "7"}, {"level", "3.5"}, {"source", "gsm8k"}};
  EXPECT_EQ(fields, expected);
  // sft rows keep what their schema does not read, "chosen" included.
  auto sft = write(dir / "sft.jsonl", "{\"prompt\": \"hi\", \"response\": \"hello\", \"answer\": \"x\", \"chosen\": \"c\"}\n");
  HostDataSource ss(one(dataset(sft, "sft"), 0), 1, dir / "cache");
  const std::map<std::string, std::string> sft_expected = {{"answer", "x"}, {"chosen", "c"}};
  EXPECT_EQ(ss.examples(Phase::sft, false).at(0).fields, sft_expected);
}

// tokenized() rows name the example they came from, also where PPO dropped over-long prompts, and also when read
// back from the cache.
TEST(DataFields, TokenizedRowsPointAtTheirExample) {
  auto tok = quickstart_tokenizer();
  auto dir = temp_dir("example-index");
  std::string rows;
  for (int i = 0; i < 12; ++i) {
    std::string prompt = "q" + std::to_string(i);
    if (i % 3 == 0)
      for (int k = 0; k < 40; ++k) prompt += " and a long tail";  // dropped by max_prompt_seq_len
    rows += "{\"prompt\": \"" + prompt + "\", \"chosen\": \"a\", \"rejected\": \"b\", \"answer\": " +
            std::to_string(i) + "}\n";
  }
  auto file = write(dir / "rows.jsonl", rows);
  DataSpec spec = one(dataset(file, "pairwise"), 0);
  spec.split = {0, 0, 1};
  spec.max_seq_len = 128;
  spec.max_prompt_seq_len = 32;
  for (int pass = 0; pass < 2; ++pass) {  // the first builds the cache, the second reads it
    HostDataSource source(spec, 1, dir / "cache");
    const auto& texts = source.examples(Phase::ppo, false);
    const auto& tokenized = source.tokenized(Phase::ppo, false, *tok);
    EXPECT_EQ(source.counts().cache_hits, pass) << pass;
    ASSERT_EQ(texts.size(), 12u);
    ASSERT_EQ(tokenized.size(), 8u) << pass;
    std::set<int64_t> seen;
    for (const auto& t : tokenized) {
      ASSERT_GE(t.example, 0);
      ASSERT_LT(t.example, 12);
      const auto& text = texts[static_cast<size_t>(t.example)];
      EXPECT_EQ(t.prompt, tok->encode(text.prompt)) << "pass " << pass << ", example " << t.example;
      EXPECT_NE(std::stoi(text.fields.at("answer")) % 3, 0);
      seen.insert(t.example);
    }
    EXPECT_EQ(seen.size(), 8u);
  }
}
