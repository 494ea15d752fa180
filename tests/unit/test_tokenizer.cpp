// Tokenizer parity with HF `tokenizers` on the fixtures of tools/make_tokenizer_fixtures.py, plus batching,
// OPT-style folders, save/load and bad input.
#include <gtest/gtest.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <dschat/sdk/tokenizer.h>

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace fs = std::filesystem;
using dschat::Tokenizer;
using dschat::TokenizerError;
using nlohmann::json;

namespace {

const fs::path kData = fs::path(DSCHAT_SOURCE_DIR) / "tests" / "data" / "tokenizers";

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

const std::vector<std::string>& corpus() {
  static const std::vector<std::string> lines = [] {
    std::vector<std::string> v;
    std::istringstream in(slurp(kData / "corpus.jsonl"));
    std::string line;
    while (std::getline(in, line)) v.push_back(json::parse(line).get<std::string>());
    return v;
  }();
  return lines;
}

std::vector<int64_t> ids_of(const json& j) { return j.get<std::vector<int64_t>>(); }

// A fresh folder under the build tree, removed on destruction.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::path(DSCHAT_BINARY_DIR) / "test-tmp" / fmt::format("tokenizer-{}-{}", ::getpid(), counter()++);
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  static int& counter() {
    static int c = 0;
    return c;
  }
};

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, IdsAndDecodeMatchHfOnEveryLine) {
  const auto dir = kData / GetParam();
  auto tok = Tokenizer::from_file(dir / "tokenizer.json");
  const auto& lines = corpus();
  ASSERT_GE(lines.size(), 10000u);
  const int64_t n_template = tok->num_special_tokens_to_add();
  std::istringstream in(slurp(dir / "expected.jsonl"));
  std::string row;
  int checked = 0, failures = 0;
  while (std::getline(in, row)) {
    json e = json::parse(row);
    const std::size_t i = e["line"].get<std::size_t>();
    ASSERT_LT(i, lines.size());
    const std::string& text = lines[i];
    auto expect_ids = ids_of(e["ids"]);
    auto expect_plain = e.contains("ids_plain") ? ids_of(e["ids_plain"])
                                                : std::vector<int64_t>(expect_ids.begin() + n_template, expect_ids.end());
    std::string expect_decoded = e.value("decoded", text);
    std::string expect_skip = e.value("decoded_skip", expect_decoded);

    auto ids = tok->encode(text, true);
    auto plain = tok->encode(text, false);
    bool ok = true;
    if (ids != expect_ids || plain != expect_plain) {
      ok = false;
      if (failures < 5)
        ADD_FAILURE() << GetParam() << " line " << i << " " << json(text).dump() << "\n  got      "
                      << json(ids).dump() << "\n  expected " << json(expect_ids).dump();
    }
    std::string dec = tok->decode(expect_plain, false);
    std::string dec_skip = tok->decode(expect_ids, true);
    if (dec != expect_decoded || dec_skip != expect_skip ||
        (e.contains("decoded_full") && tok->decode(expect_ids, false) != e["decoded_full"].get<std::string>())) {
      ok = false;
      if (failures < 5)
        ADD_FAILURE() << GetParam() << " line " << i << " decode\n  got      " << json(dec).dump() << " / "
                      << json(dec_skip).dump() << "\n  expected " << json(expect_decoded).dump() << " / "
                      << json(expect_skip).dump();
    }
    failures += !ok;
    ++checked;
  }
  EXPECT_EQ(failures, 0) << "of " << checked << " lines";
  EXPECT_GE(checked, 1000);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, Parity,
                         ::testing::Values("bytelevel", "sentencepiece", "llama3_split", "bloom_split",
                                           "lowercase_prefix", "sp_legacy", "sp_metaspace_always", "sp_unk",
                                           "whitespace_split"));

TEST(Tokenizer, AddedTokensAreSplitOutWithTheirFlags) {
  auto tok = Tokenizer::from_file(kData / "bytelevel" / "tokenizer.json");
  const int64_t eot = *tok->token_to_id("<|endoftext|>"), user = *tok->token_to_id("<|user|>"),
                mask = *tok->token_to_id("[MASK_X]"), hw = *tok->token_to_id("hello world");
  const int64_t a = *tok->token_to_id("a"), b = *tok->token_to_id("b"), x = *tok->token_to_id("x"),
                y = *tok->token_to_id("y");
  // <|user|> has lstrip+rstrip: the spaces around it are swallowed.
  EXPECT_EQ(tok->encode("a <|user|>  b"), (std::vector<int64_t>{eot, a, user, b}));
  // [MASK_X] has rstrip only.
  EXPECT_EQ(tok->encode("x[MASK_X]   y", false), (std::vector<int64_t>{x, mask, y}));
  // "hello world" is single_word: not inside a word.
  auto inside = tok->encode("ahello world", false);
  EXPECT_EQ(std::count(inside.begin(), inside.end(), hw), 0);
  auto alone = tok->encode("a hello world", false);
  EXPECT_EQ(alone.back(), hw);
  // Special tokens in text are recognised, and skipped on request when decoding.
  auto ids = tok->encode("x<|endoftext|>y", false);
  EXPECT_EQ(ids, (std::vector<int64_t>{x, eot, y}));
  EXPECT_EQ(tok->decode(ids), "x<|endoftext|>y");
  EXPECT_EQ(tok->decode(ids, true), "xy");
  EXPECT_TRUE(tok->is_special(eot));
  EXPECT_FALSE(tok->is_special(mask));

  auto sp = Tokenizer::from_file(kData / "sentencepiece" / "tokenizer.json");
  EXPECT_EQ(sp->bos_id(), 1);
  EXPECT_EQ(sp->eos_id(), 2);
  EXPECT_EQ(sp->unk_id(), 0);
  auto s = sp->encode("<s>a</s>", false);
  EXPECT_EQ(s.front(), 1);
  EXPECT_EQ(s.back(), 2);
}

TEST(Tokenizer, DecodeSkipsUnknownIdsAndRejectsBadUtf8) {
  auto tok = Tokenizer::from_file(kData / "bytelevel" / "tokenizer.json");
  auto ids = tok->encode("hi there", false);
  auto with_junk = ids;
  with_junk.insert(with_junk.begin() + 1, {-5, tok->vocab_size() + 100});
  EXPECT_EQ(tok->decode(with_junk), "hi there");
  EXPECT_THROW(tok->encode(std::string("ab\xC3(", 4)), TokenizerError);
  EXPECT_EQ(tok->encode("", true), (std::vector<int64_t>{*tok->bos_id()}));
}

TEST(Tokenizer, BatchPaddingAndTruncation) {
  auto tok = Tokenizer::from_file(kData / "sentencepiece" / "tokenizer.json");
  std::vector<std::string> texts = {"Hello world, this is a longer sentence for truncation", "hi", ""};
  auto full0 = tok->encode(texts[0]), full1 = tok->encode(texts[1]), full2 = tok->encode(texts[2]);
  ASSERT_GT(full0.size(), 8u);
  const int64_t pad = tok->pad_id().value_or(tok->eos_id().value_or(0));

  auto right = tok->encode_batch(texts, 8, true, false);
  ASSERT_EQ(right.input_ids.sizes(), (at::IntArrayRef{3, 8}));
  ASSERT_EQ(right.input_ids.scalar_type(), at::kLong);
  ASSERT_EQ(right.attention_mask.scalar_type(), at::kLong);
  // Row 0 truncated to 8 with its BOS kept; row 1 right-padded.
  for (int k = 0; k < 8; ++k) EXPECT_EQ(right.input_ids[0][k].item<int64_t>(), full0[k]);
  EXPECT_EQ(right.attention_mask[0].sum().item<int64_t>(), 8);
  const int64_t n1 = static_cast<int64_t>(full1.size());
  for (int64_t k = 0; k < 8; ++k) {
    EXPECT_EQ(right.attention_mask[1][k].item<int64_t>(), k < n1 ? 1 : 0);
    EXPECT_EQ(right.input_ids[1][k].item<int64_t>(), k < n1 ? full1[k] : pad);
  }
  EXPECT_EQ(right.attention_mask[2].sum().item<int64_t>(), static_cast<int64_t>(full2.size()));

  auto left = tok->encode_batch(texts, 8, true, true);
  for (int64_t k = 0; k < 8; ++k) {
    EXPECT_EQ(left.attention_mask[1][k].item<int64_t>(), k >= 8 - n1 ? 1 : 0);
    EXPECT_EQ(left.input_ids[1][k].item<int64_t>(), k >= 8 - n1 ? full1[k - (8 - n1)] : pad);
  }
  // Padding to the longest row only.
  auto longest = tok->encode_batch({texts[1], texts[2]}, 64, false, false);
  EXPECT_EQ(longest.input_ids.size(1), n1);
  // Without truncation a long row is an error.
  EXPECT_THROW(tok->encode_batch(texts, 8, true, false, false), TokenizerError);
}

TEST(Tokenizer, OptStyleVocabAndMergesMatchTokenizerJson) {
  auto json_tok = Tokenizer::from_file(kData / "bytelevel" / "tokenizer.json");
  auto opt = Tokenizer::from_dir(kData / "opt_style");
  EXPECT_EQ(opt->bos_id(), json_tok->token_to_id("<|endoftext|>"));
  EXPECT_EQ(opt->eos_id(), json_tok->token_to_id("<|endoftext|>"));
  int compared = 0;
  for (const auto& line : corpus()) {
    // The json adds tokens OPT's folder does not know.
    if (line.find("<|user|>") != std::string::npos || line.find("[MASK_X]") != std::string::npos ||
        line.find("hello world") != std::string::npos)
      continue;
    auto a = json_tok->encode(line), b = opt->encode(line);
    ASSERT_EQ(a, b) << json(line).dump();
    ASSERT_EQ(opt->decode(b, true), json_tok->decode(a, true));
    ++compared;
  }
  EXPECT_GT(compared, 9000);

  // save() writes a tokenizer.json that loads to the same tokenizer, and the special tokens.
  TempDir tmp;
  opt->save(tmp.path);
  auto again = Tokenizer::from_dir(tmp.path);
  EXPECT_EQ(again->encode("Hello there <|endoftext|> 123"), opt->encode("Hello there <|endoftext|> 123"));
  EXPECT_EQ(again->bos_id(), opt->bos_id());
  auto cfg = json::parse(slurp(tmp.path / "tokenizer_config.json"));
  EXPECT_EQ(cfg["eos_token"], "<|endoftext|>");
  EXPECT_TRUE(cfg["pad_token"].is_null());
  for (const auto& e : fs::directory_iterator(tmp.path))
    EXPECT_EQ(e.path().string().find(".tmp."), std::string::npos) << "left a temporary: " << e.path();
}

TEST(Tokenizer, SaveCopiesTheSourceJson) {
  TempDir tmp;
  auto sp = Tokenizer::from_file(kData / "sentencepiece" / "tokenizer.json");
  sp->save(tmp.path);
  EXPECT_EQ(slurp(tmp.path / "tokenizer.json"), slurp(kData / "sentencepiece" / "tokenizer.json"));
  auto again = Tokenizer::from_dir(tmp.path);
  EXPECT_EQ(again->pad_id(), sp->pad_id());
  EXPECT_EQ(again->encode(corpus()[3]), sp->encode(corpus()[3]));
}

// Loads `text` as a tokenizer.json and returns the error message (or "" if it loaded).
std::string load_error(const std::string& text, fs::path* where = nullptr) {
  static TempDir tmp;
  static int n = 0;
  auto p = tmp.path / fmt::format("bad{}", n++) / "tokenizer.json";
  fs::create_directories(p.parent_path());
  write(p, text);
  if (where) *where = p;
  try {
    Tokenizer::from_file(p);
  } catch (const TokenizerError& e) {
    EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << "message does not name the file: " << e.what();
    return e.what();
  }
  return "";
}

TEST(Tokenizer, BadInputGivesClearErrors) {
  const std::string good = slurp(kData / "bytelevel" / "tokenizer.json");
  ASSERT_EQ(load_error(good), "");
  EXPECT_NE(load_error(good.substr(0, good.size() / 2)).find("not valid JSON"), std::string::npos);

  json j = json::parse(good);
  j["model"]["vocab"] = json::array({"a", "b"});
  EXPECT_NE(load_error(j.dump()).find("model.vocab: must be an object"), std::string::npos);

  j = json::parse(good);
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(load_error(j.dump()).find("unsupported model type WordPiece"), std::string::npos);

  j = json::parse(good);
  j["model"]["merges"].push_back(json::array({"Ġzzzq", "Ġqqq"}));
  std::string msg = load_error(j.dump());
  EXPECT_NE(msg.find("not in the vocab"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Ġzzzq"), std::string::npos) << msg;

  j = json::parse(good);
  j["model"]["merges"][0] = 42;
  EXPECT_NE(load_error(j.dump()).find("model.merges[0]"), std::string::npos);

  j = json::parse(good);
  j["normalizer"] = {{"type", "NFC"}};
  EXPECT_NE(load_error(j.dump()).find("unsupported normalizer NFC"), std::string::npos);

  j = json::parse(good);
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\d+"}}}, {"behavior", "Isolated"}, {"invert", false}};
  EXPECT_NE(load_error(j.dump()).find("unsupported regex"), std::string::npos);

  j = json::parse(good);
  j["added_tokens"][0]["id"] = "zero";
  EXPECT_NE(load_error(j.dump()).find("added_tokens[0].id: must be an integer"), std::string::npos);

  j = json::parse(good);
  j.erase("model");
  EXPECT_NE(load_error(j.dump()).find("missing key \"model\""), std::string::npos);

  EXPECT_THROW(Tokenizer::from_file(kData / "does-not-exist.json"), TokenizerError);
  EXPECT_THROW(Tokenizer::from_dir(kData / "does-not-exist"), TokenizerError);

  // OPT folders: a merge naming an unknown token is reported with its line.
  TempDir tmp;
  fs::copy(kData / "opt_style", tmp.path, fs::copy_options::recursive);
  write(tmp.path / "merges.txt", "#version: 0.2\nĠ t\nzzq qqz\n");
  try {
    Tokenizer::from_dir(tmp.path);
    ADD_FAILURE() << "loaded a bad merges.txt";
  } catch (const TokenizerError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("merges.txt: line 3"), std::string::npos) << m;
  }
}

}  // namespace
