// Reads HF tokenizer.json (and OPT/GPT-2 vocab.json + merges.txt folders, turned into the same json) into the
// pipeline stages. Every problem is a TokenizerError naming the file, the key and what is wrong.
#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../nesting_limits.h"
#include "dschat/sdk/tokenizer.h"
#include "pipeline.h"

namespace dschat::tok {
namespace {

using nlohmann::json;

struct Ctx {
  std::string file;
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    throw TokenizerError(fmt::format("{}: {}: {}", file, key, what));
  }
  [[noreturn]] void unsupported(const std::string& kind, const std::string& type) const {
    throw TokenizerError(fmt::format("{}: unsupported {} {} (supported: {})", file, kind, type,
                                     kind == "model type"      ? "BPE"
                                     : kind == "normalizer"    ? "Sequence, Prepend, Replace (string), Lowercase, Strip"
                                     : kind == "pre_tokenizer" ? "ByteLevel, Metaspace, Split (GPT-2/LLaMA-3/BLOOM "
                                                                 "regex or a string), WhitespaceSplit, Sequence"
                                     : kind == "decoder"       ? "ByteLevel, Metaspace, ByteFallback, Fuse, Strip, "
                                                                 "Replace (string), Sequence"
                                                               : "TemplateProcessing, ByteLevel, RobertaProcessing, "
                                                                 "BertProcessing, Sequence"));
  }
};

const char* type_name(const json& j) { return j.type_name(); }

const json& member(const Ctx& c, const json& obj, const std::string& key, const std::string& path) {
  if (!obj.is_object()) c.fail(path, fmt::format("must be an object, found {}", type_name(obj)));
  auto it = obj.find(key);
  if (it == obj.end()) c.fail(path, fmt::format("missing key \"{}\"", key));
  return *it;
}
const json* optional_member(const Ctx& c, const json& obj, const std::string& key, const std::string& path) {
  if (!obj.is_object()) c.fail(path, fmt::format("must be an object, found {}", type_name(obj)));
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}
std::string get_string(const Ctx& c, const json& obj, const std::string& key, const std::string& path) {
  const json& v = member(c, obj, key, path);
  if (!v.is_string()) c.fail(path + "." + key, fmt::format("must be a string, found {}", type_name(v)));
  return v.get<std::string>();
}
std::optional<std::string> opt_string(const Ctx& c, const json& obj, const std::string& key, const std::string& path) {
  const json* v = optional_member(c, obj, key, path);
  if (!v) return std::nullopt;
  if (!v->is_string()) c.fail(path + "." + key, fmt::format("must be a string or null, found {}", type_name(*v)));
  return v->get<std::string>();
}
bool get_bool(const Ctx& c, const json& obj, const std::string& key, const std::string& path, bool def) {
  const json* v = optional_member(c, obj, key, path);
  if (!v) return def;
  if (!v->is_boolean()) c.fail(path + "." + key, fmt::format("must be a boolean, found {}", type_name(*v)));
  return v->get<bool>();
}
int64_t get_int(const Ctx& c, const json& v, const std::string& path) {
  if (!v.is_number_integer()) c.fail(path, fmt::format("must be an integer, found {}", type_name(v)));
  return v.get<int64_t>();
}
const json& get_array(const Ctx& c, const json& obj, const std::string& key, const std::string& path) {
  const json& v = member(c, obj, key, path);
  if (!v.is_array()) c.fail(path + "." + key, fmt::format("must be an array, found {}", type_name(v)));
  return v;
}
std::string type_of(const Ctx& c, const json& obj, const std::string& path) { return get_string(c, obj, "type", path); }

// {"String": "x"} patterns only; a {"Regex": ...} is reported by the caller.
std::optional<std::string> string_pattern(const Ctx& c, const json& obj, const std::string& path) {
  const json& p = member(c, obj, "pattern", path);
  if (!p.is_object()) c.fail(path + ".pattern", fmt::format("must be an object, found {}", type_name(p)));
  if (auto it = p.find("String"); it != p.end()) {
    if (!it->is_string()) c.fail(path + ".pattern.String", "must be a string");
    return it->get<std::string>();
  }
  return std::nullopt;
}

std::unique_ptr<Normalizer> parse_normalizer(const Ctx& c, const json& j, const std::string& path) {
  std::string type = type_of(c, j, path);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    const json& arr = get_array(c, j, "normalizers", path);
    for (std::size_t i = 0; i < arr.size(); ++i)
      parts.push_back(parse_normalizer(c, arr[i], fmt::format("{}.normalizers[{}]", path, i)));
    return make_normalizer_sequence(std::move(parts));
  }
  if (type == "Lowercase") return make_lowercase();
  if (type == "Strip")
    return make_strip(get_bool(c, j, "strip_left", path, true), get_bool(c, j, "strip_right", path, true));
  if (type == "Prepend") return make_prepend(get_string(c, j, "prepend", path));
  if (type == "Replace") {
    auto pattern = string_pattern(c, j, path);
    if (!pattern) c.unsupported("normalizer", "Replace with a Regex pattern");
    return make_replace(*pattern, get_string(c, j, "content", path));
  }
  c.unsupported("normalizer", type);
}

PrependScheme prepend_scheme(const Ctx& c, const json& j, const std::string& path) {
  if (auto s = opt_string(c, j, "prepend_scheme", path)) {
    if (*s == "first") return PrependScheme::First;
    if (*s == "always") return PrependScheme::Always;
    if (*s == "never") return PrependScheme::Never;
    c.fail(path + ".prepend_scheme", fmt::format("unknown value \"{}\" (first, always or never)", *s));
  }
  // Files older than prepend_scheme spell it add_prefix_space.
  return get_bool(c, j, "add_prefix_space", path, true) ? PrependScheme::Always : PrependScheme::Never;
}

std::string metaspace_replacement(const Ctx& c, const json& j, const std::string& path) {
  std::string r = get_string(c, j, "replacement", path);
  if (r.empty()) c.fail(path + ".replacement", "must be one character, found an empty string");
  return r;
}

SplitBehavior split_behavior(const Ctx& c, const json& j, const std::string& path) {
  std::string b = get_string(c, j, "behavior", path);
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  c.fail(path + ".behavior", fmt::format("unknown split behavior \"{}\"", b));
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const Ctx& c, const json& j, const std::string& path) {
  std::string type = type_of(c, j, path);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    const json& arr = get_array(c, j, "pretokenizers", path);
    for (std::size_t i = 0; i < arr.size(); ++i)
      parts.push_back(parse_pre_tokenizer(c, arr[i], fmt::format("{}.pretokenizers[{}]", path, i)));
    return make_pre_tokenizer_sequence(std::move(parts));
  }
  if (type == "ByteLevel")
    return make_byte_level(get_bool(c, j, "add_prefix_space", path, true), get_bool(c, j, "use_regex", path, true));
  if (type == "Metaspace")
    return make_metaspace(metaspace_replacement(c, j, path), prepend_scheme(c, j, path),
                          get_bool(c, j, "split", path, true));
  if (type == "WhitespaceSplit") return make_whitespace_split();
  if (type == "Split") {
    SplitBehavior behavior = split_behavior(c, j, path);
    bool invert = get_bool(c, j, "invert", path, false);
    if (auto s = string_pattern(c, j, path)) return make_split_string(*s, behavior, invert);
    const json& p = member(c, j, "pattern", path);
    auto it = p.find("Regex");
    if (it == p.end() || !it->is_string())
      c.fail(path + ".pattern", "must be {\"String\": ...} or {\"Regex\": ...}");
    std::string rx = it->get<std::string>();
    auto known = known_regex(rx);
    if (!known)
      c.fail(path + ".pattern.Regex",
             fmt::format("unsupported regex \"{}\": only the GPT-2, LLaMA-3 and BLOOM patterns are implemented", rx));
    return make_split_regex(*known, behavior, invert);
  }
  c.unsupported("pre_tokenizer", type);
}

std::unique_ptr<Decoder> parse_decoder(const Ctx& c, const json& j, const std::string& path) {
  std::string type = type_of(c, j, path);
  if (type == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    const json& arr = get_array(c, j, "decoders", path);
    for (std::size_t i = 0; i < arr.size(); ++i)
      parts.push_back(parse_decoder(c, arr[i], fmt::format("{}.decoders[{}]", path, i)));
    return make_decoder_sequence(std::move(parts));
  }
  if (type == "ByteLevel") return make_byte_level_decoder();
  if (type == "Metaspace") return make_metaspace_decoder(metaspace_replacement(c, j, path), prepend_scheme(c, j, path));
  if (type == "ByteFallback") return make_byte_fallback_decoder();
  if (type == "Fuse") return make_fuse_decoder();
  if (type == "Strip") {
    auto count = [&](const char* key) {
      int64_t v = get_int(c, member(c, j, key, path), path + "." + key);
      if (v < 0) c.fail(path + "." + key, "must not be negative");
      return static_cast<std::size_t>(v);
    };
    return make_strip_decoder(get_string(c, j, "content", path), count("start"), count("stop"));
  }
  if (type == "Replace") {
    auto pattern = string_pattern(c, j, path);
    if (!pattern) c.unsupported("decoder", "Replace with a Regex pattern");
    return make_replace_decoder(*pattern, get_string(c, j, "content", path));
  }
  c.unsupported("decoder", type);
}

// Fills impl.template_* from one post-processor (Sequence: each in turn; the last template wins).
void parse_post_processor(const Ctx& c, const json& j, const std::string& path, Impl& impl) {
  std::string type = type_of(c, j, path);
  if (type == "Sequence") {
    const json& arr = get_array(c, j, "processors", path);
    for (std::size_t i = 0; i < arr.size(); ++i)
      parse_post_processor(c, arr[i], fmt::format("{}.processors[{}]", path, i), impl);
    return;
  }
  if (type == "ByteLevel") return;  // only moves offsets
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    auto id_of = [&](const char* key) {
      const json& v = member(c, j, key, path);
      if (!v.is_array() || v.size() != 2) c.fail(path + "." + key, "must be [token, id]");
      return get_int(c, v[1], fmt::format("{}.{}[1]", path, key));
    };
    impl.template_items = {{id_of("cls")}, {}, {id_of("sep")}};
    impl.template_is_sequence = {false, true, false};
    return;
  }
  if (type != "TemplateProcessing") c.unsupported("post_processor", type);
  const json& specials = member(c, j, "special_tokens", path);
  if (!specials.is_object()) c.fail(path + ".special_tokens", "must be an object");
  const json& single = get_array(c, j, "single", path);
  impl.template_items.clear();
  impl.template_is_sequence.clear();
  for (std::size_t i = 0; i < single.size(); ++i) {
    std::string p = fmt::format("{}.single[{}]", path, i);
    const json& item = single[i];
    if (!item.is_object()) c.fail(p, fmt::format("must be an object, found {}", type_name(item)));
    if (auto it = item.find("Sequence"); it != item.end()) {
      impl.template_items.emplace_back();
      impl.template_is_sequence.push_back(true);
    } else if (auto st = item.find("SpecialToken"); st != item.end()) {
      std::string name = get_string(c, *st, "id", p + ".SpecialToken");
      auto sp = specials.find(name);
      if (sp == specials.end())
        c.fail(p, fmt::format("special token \"{}\" is not in {}.special_tokens", name, path));
      const json& ids = get_array(c, *sp, "ids", fmt::format("{}.special_tokens.{}", path, name));
      std::vector<int64_t> v;
      for (std::size_t k = 0; k < ids.size(); ++k)
        v.push_back(get_int(c, ids[k], fmt::format("{}.special_tokens.{}.ids[{}]", path, name, k)));
      impl.template_items.push_back(std::move(v));
      impl.template_is_sequence.push_back(false);
    } else {
      c.fail(p, "must hold \"Sequence\" or \"SpecialToken\"");
    }
  }
}

std::unique_ptr<Bpe> parse_model(const Ctx& c, const json& m) {
  const std::string path = "model";
  if (!m.is_object()) c.fail(path, fmt::format("must be an object, found {}", type_name(m)));
  std::string type = m.contains("type") ? type_of(c, m, path) : (m.contains("merges") ? "BPE" : "(untyped)");
  if (type != "BPE") c.unsupported("model type", type);
  if (const json* d = optional_member(c, m, "dropout", path)) {
    if (!d->is_number()) c.fail("model.dropout", "must be a number or null");
    if (d->get<double>() != 0.0) c.fail("model.dropout", "BPE dropout is not supported (encoding would be random)");
  }
  const json& vocab = member(c, m, "vocab", path);
  if (!vocab.is_object()) c.fail("model.vocab", fmt::format("must be an object of token -> id, found {}", type_name(vocab)));
  std::unordered_map<std::string, int32_t> v;
  v.reserve(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    int64_t id = get_int(c, it.value(), fmt::format("model.vocab[\"{}\"]", it.key()));
    if (id < 0 || id > INT32_MAX) c.fail(fmt::format("model.vocab[\"{}\"]", it.key()), fmt::format("bad id {}", id));
    v.emplace(it.key(), static_cast<int32_t>(id));
  }
  const json& merges = get_array(c, m, "merges", path);
  std::vector<std::pair<std::string, std::string>> pairs;
  pairs.reserve(merges.size());
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const json& e = merges[i];
    if (e.is_string()) {  // "a b" (older files)
      const std::string& s = e.get_ref<const std::string&>();
      auto sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        c.fail(fmt::format("model.merges[{}]", i), fmt::format("\"{}\" must be two tokens separated by one space", s));
      pairs.emplace_back(s.substr(0, sp), s.substr(sp + 1));
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      pairs.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
    } else {
      c.fail(fmt::format("model.merges[{}]", i), fmt::format("must be \"a b\" or [\"a\", \"b\"], found {}", e.dump()));
    }
  }
  Bpe::Options o;
  o.unk_token = opt_string(c, m, "unk_token", path);
  o.continuing_subword_prefix = opt_string(c, m, "continuing_subword_prefix", path);
  o.end_of_word_suffix = opt_string(c, m, "end_of_word_suffix", path);
  if (o.continuing_subword_prefix && o.continuing_subword_prefix->empty()) o.continuing_subword_prefix.reset();
  if (o.end_of_word_suffix && o.end_of_word_suffix->empty()) o.end_of_word_suffix.reset();
  o.fuse_unk = get_bool(c, m, "fuse_unk", path, false);
  o.byte_fallback = get_bool(c, m, "byte_fallback", path, false);
  o.ignore_merges = get_bool(c, m, "ignore_merges", path, false);
  try {
    return std::make_unique<Bpe>(std::move(v), pairs, std::move(o));
  } catch (const std::invalid_argument& e) {
    c.fail("model", e.what());
  }
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw TokenizerError(fmt::format("{}: cannot open for reading", p.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json parse_json(const std::string& text, const std::string& file) {
  if (auto deep = limits::json_nesting_excess(text))
    throw TokenizerError(fmt::format("{}: not a tokenizer file: JSON nests deeper than {} levels (line {}, column {})",
                                     file, limits::kMaxJsonDepth, deep->line, deep->column));
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    throw TokenizerError(fmt::format("{}: not valid JSON (truncated or corrupt?): {}", file, e.what()));
  }
}

// A token given in tokenizer_config.json: "text", {"content": "text", ...} or null.
std::optional<std::string> config_token(const Ctx& c, const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  c.fail(key, fmt::format("must be a string, {{\"content\": ...}} or null, found {}", it->dump()));
}

}  // namespace

std::unique_ptr<Impl> load_tokenizer_json(std::string json_text, const std::filesystem::path& source) {
  Ctx c{source.string()};
  json j = parse_json(json_text, c.file);
  if (!j.is_object()) c.fail("(top level)", fmt::format("must be an object, found {}", type_name(j)));
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  impl->json_text = std::move(json_text);
  impl->model = parse_model(c, member(c, j, "model", "(top level)"));
  if (const json* n = optional_member(c, j, "normalizer", "(top level)")) impl->normalizer = parse_normalizer(c, *n, "normalizer");
  if (const json* p = optional_member(c, j, "pre_tokenizer", "(top level)"))
    impl->pre_tokenizer = parse_pre_tokenizer(c, *p, "pre_tokenizer");
  if (const json* d = optional_member(c, j, "decoder", "(top level)")) impl->decoder = parse_decoder(c, *d, "decoder");
  if (const json* p = optional_member(c, j, "post_processor", "(top level)"))
    parse_post_processor(c, *p, "post_processor", *impl);
  if (const json* a = optional_member(c, j, "added_tokens", "(top level)")) {
    if (!a->is_array()) c.fail("added_tokens", fmt::format("must be an array, found {}", type_name(*a)));
    for (std::size_t i = 0; i < a->size(); ++i) {
      std::string p = fmt::format("added_tokens[{}]", i);
      const json& t = (*a)[i];
      auto tok = std::make_unique<AddedToken>();
      tok->id = get_int(c, member(c, t, "id", p), p + ".id");
      tok->content = get_string(c, t, "content", p);
      if (tok->content.empty()) c.fail(p + ".content", "must not be empty");
      tok->single_word = get_bool(c, t, "single_word", p, false);
      tok->lstrip = get_bool(c, t, "lstrip", p, false);
      tok->rstrip = get_bool(c, t, "rstrip", p, false);
      tok->normalized = get_bool(c, t, "normalized", p, true);
      tok->special = get_bool(c, t, "special", p, false);
      impl->added.push_back(std::move(tok));
    }
  }
  for (std::size_t i = 0; i < impl->template_items.size(); ++i)
    for (int64_t id : impl->template_items[i])
      if (!impl->known_id(id)) c.fail("post_processor", fmt::format("special token id {} is not in the vocabulary", id));
  impl->finalize_added_tokens();

  // Defaults before any tokenizer_config.json: see Tokenizer::from_file.
  if (auto u = impl->model->options().unk_token) impl->unk = *impl->model->token_to_id(*u);
  for (std::size_t i = 0; i < impl->template_items.size() && !impl->bos; ++i)
    if (!impl->template_is_sequence[i] && !impl->template_items[i].empty()) impl->bos = impl->template_items[i][0];
    else if (impl->template_is_sequence[i]) break;
  for (const char* eos : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>"}) {
    auto it = impl->added_by_content.find(eos);
    if (it != impl->added_by_content.end() && impl->added_by_id.at(it->second)->special) {
      impl->eos = it->second;
      break;
    }
  }
  for (const char* pad : {"<pad>", "<|pad|>", "[PAD]"}) {
    auto it = impl->added_by_content.find(pad);
    if (it != impl->added_by_content.end()) {
      impl->pad = it->second;
      break;
    }
  }
  return impl;
}

void apply_special_token_config(Impl& impl, const std::filesystem::path& dir) {
  for (const char* name : {"special_tokens_map.json", "tokenizer_config.json"}) {  // the latter wins
    auto path = dir / name;
    if (!std::filesystem::exists(path)) continue;
    Ctx c{path.string()};
    json cfg = parse_json(read_file(path), c.file);
    if (!cfg.is_object()) c.fail("(top level)", "must be an object");
    auto set = [&](const char* key, std::optional<int64_t>& slot) {
      auto tok = config_token(c, cfg, key);
      if (!tok) return;
      auto it = impl.added_by_content.find(*tok);
      std::optional<int64_t> id;
      if (it != impl.added_by_content.end()) id = it->second;
      else if (auto m = impl.model->token_to_id(*tok)) id = *m;
      if (!id) c.fail(key, fmt::format("token \"{}\" is not in the vocabulary", *tok));
      slot = id;
    };
    set("bos_token", impl.bos);
    set("eos_token", impl.eos);
    set("pad_token", impl.pad);
    set("unk_token", impl.unk);
  }
}

std::unique_ptr<Impl> load_vocab_merges(const std::filesystem::path& dir) {
  const auto vocab_path = dir / "vocab.json", merges_path = dir / "merges.txt", cfg_path = dir / "tokenizer_config.json";
  Ctx vc{vocab_path.string()};
  json vocab = parse_json(read_file(vocab_path), vc.file);
  if (!vocab.is_object()) vc.fail("(top level)", fmt::format("must be an object of token -> id, found {}", type_name(vocab)));
  for (auto it = vocab.begin(); it != vocab.end(); ++it)
    if (!it.value().is_number_integer()) vc.fail(fmt::format("[\"{}\"]", it.key()), "id must be an integer");

  Ctx mc{merges_path.string()};
  json merges = json::array();
  {
    std::istringstream in(read_file(merges_path));
    std::string line;
    for (std::size_t no = 1; std::getline(in, line); ++no) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || (no == 1 && line.rfind("#version", 0) == 0)) continue;
      auto sp = line.find(' ');
      if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
        mc.fail(fmt::format("line {}", no), fmt::format("\"{}\" must be two tokens separated by one space", line));
      std::string a = line.substr(0, sp), b = line.substr(sp + 1);
      for (const auto& t : {a, b})
        if (!vocab.contains(t))
          mc.fail(fmt::format("line {}", no), fmt::format("token \"{}\" is not in {}", t, vocab_path.filename().string()));
      merges.push_back(json::array({a, b}));
    }
  }

  json cfg = json::object();
  Ctx cc{cfg_path.string()};
  if (std::filesystem::exists(cfg_path)) {
    cfg = parse_json(read_file(cfg_path), cc.file);
    if (!cfg.is_object()) cc.fail("(top level)", "must be an object");
  }
  // The special tokens transformers would register, as special added tokens (ids from vocab.json).
  json added = json::array();
  std::vector<std::string> seen;
  auto add_special = [&](const std::string& content, int64_t id) {
    if (std::find(seen.begin(), seen.end(), content) != seen.end()) return;
    seen.push_back(content);
    added.push_back({{"id", id}, {"content", content}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                     {"normalized", false}, {"special", true}});
  };
  if (auto it = cfg.find("added_tokens_decoder"); it != cfg.end() && it->is_object()) {
    for (auto t = it->begin(); t != it->end(); ++t) {
      int64_t id = 0;
      try {
        id = std::stoll(t.key());
      } catch (const std::exception&) {
        cc.fail("added_tokens_decoder", fmt::format("key \"{}\" is not an id", t.key()));
      }
      std::string content = get_string(cc, t.value(), "content", "added_tokens_decoder." + t.key());
      seen.push_back(content);
      added.push_back({{"id", id}, {"content", content},
                       {"single_word", t.value().value("single_word", false)}, {"lstrip", t.value().value("lstrip", false)},
                       {"rstrip", t.value().value("rstrip", false)}, {"normalized", t.value().value("normalized", false)},
                       {"special", t.value().value("special", true)}});
    }
  }
  std::optional<std::string> bos;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
    auto tok = config_token(cc, cfg, key);
    if (!tok) continue;
    if (!vocab.contains(*tok)) cc.fail(key, fmt::format("token \"{}\" is not in {}", *tok, vocab_path.string()));
    add_special(*tok, vocab[*tok].get<int64_t>());
    if (std::string_view(key) == "bos_token") bos = tok;
  }
  bool add_bos = cfg.value("add_bos_token", false);
  if (add_bos && !bos) cc.fail("add_bos_token", "is true but no bos_token is given");
  bool prefix = cfg.value("add_prefix_space", false);

  json j = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
            {"normalizer", nullptr},
            {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", prefix}, {"trim_offsets", true}, {"use_regex", true}}}};
  if (add_bos) {
    int64_t bid = vocab[*bos].get<int64_t>();
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", *bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", *bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", *bos}, {"type_id", 1}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{*bos, {{"id", *bos}, {"ids", {bid}}, {"tokens", {*bos}}}}}}};
  } else {
    j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}};
  auto impl = load_tokenizer_json(j.dump(1), dir / "vocab.json + merges.txt");
  impl->source = dir;
  return impl;
}

std::string special_token_config_json(const Impl& impl) {
  auto name = [&](const std::optional<int64_t>& id) -> json {
    if (!id) return nullptr;
    return impl.token_text(*id);
  };
  json cfg = {{"tokenizer_class", "PreTrainedTokenizerFast"},
              {"bos_token", name(impl.bos)},
              {"eos_token", name(impl.eos)},
              {"pad_token", name(impl.pad)},
              {"unk_token", name(impl.unk)}};
  return cfg.dump(2) + "\n";
}

std::string read_text_file(const std::filesystem::path& p) { return read_file(p); }

}  // namespace dschat::tok
