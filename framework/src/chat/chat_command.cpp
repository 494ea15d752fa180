// `dschat chat`: a multi-turn conversation with a model folder, tokens printed as they are decoded.
// The prompt is the model's chat template when its tokenizer has one, else DeepSpeed-Chat's " Human: ...
// Assistant:" turns (what dschat's pipelines train on; the answer ends where the model starts the next "Human:").
#include <unistd.h>

#include <algorithm>
#include <iostream>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include "../command_support.h"
#include "dschat/framework/chat_template.h"
#include "dschat/framework/registry.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/tokenizer.h"

namespace po = boost::program_options;

namespace dschat {
namespace {

constexpr const char* kSynopsis =
    "--model DIR [--system TEXT] [--max-new-tokens N] [--greedy | --temperature T --top-p P --top-k K] "
    "[--seed S] [--dtype fp32|bf16] [--generation PLUGIN]";

// Prints an answer as it grows, holding back what may still change: a UTF-8 character split over tokens and,
// in DeepSpeed-Chat format, a tail that could be the start of the next "Human:".
class AnswerStream {
 public:
  AnswerStream(std::ostream& out, std::optional<std::string> stop_marker)
      : out_(out), stop_marker_(std::move(stop_marker)) {}

  // The decoded answer so far; returns false once it reached the stop marker.
  bool update(const std::string& text) {
    std::string shown = cut_at_marker(text);
    const bool stop = shown.size() != text.size();
    if (!stop) shown.resize(shown.size() - held_back(shown));
    print_up_to(shown);
    return !stop;
  }
  // The whole answer once generation ended: whatever was held back is printed, the marker is not.
  std::string finish(const std::string& text) {
    std::string answer = cut_at_marker(text);
    print_up_to(answer);
    out_ << "\n" << std::flush;
    return answer;
  }

 private:
  std::string cut_at_marker(const std::string& text) const {
    if (!stop_marker_) return text;
    const auto at = text.find(*stop_marker_);
    if (at == std::string::npos) return text;
    std::string answer = text.substr(0, at);
    answer.erase(answer.find_last_not_of(' ') + 1);
    return answer;
  }
  // How much of the end may still change: a character cut in the middle (the decoder shows it as U+FFFD until the
  // next token completes it), or a tail that could be the start of the marker.
  size_t held_back(const std::string& text) const {
    static const std::string replacement = "\xEF\xBF\xBD";
    if (text.ends_with(replacement)) return replacement.size();
    if (!stop_marker_) return 0;
    for (size_t n = std::min(text.size(), stop_marker_->size() - 1); n > 0; --n)
      if (text.compare(text.size() - n, n, *stop_marker_, 0, n) == 0) return n;
    return 0;
  }
  void print_up_to(const std::string& shown) {
    printed_ = std::max(printed_, std::min(shown.find_first_not_of(' '), shown.size()));  // no leading space shown
    if (shown.size() <= printed_) return;
    out_ << shown.substr(printed_) << std::flush;
    printed_ = shown.size();
  }

  std::ostream& out_;
  std::optional<std::string> stop_marker_;
  size_t printed_ = 0;
};

class ChatSession {
 public:
  ChatSession(std::shared_ptr<CausalLM> model, std::shared_ptr<Tokenizer> tokenizer,
              std::optional<ChatTemplate> chat_template, std::shared_ptr<Generator> generator,
              SamplingOptions sampling, std::string system)
      : model_(std::move(model)), tokenizer_(std::move(tokenizer)), template_(std::move(chat_template)),
        generator_(std::move(generator)), sampling_(std::move(sampling)), system_(std::move(system)) {}

  void clear() { history_.clear(); }

  void answer(const std::string& user_text, std::ostream& out) {
    history_.push_back({"user", user_text});
    std::vector<int64_t> ids = prompt_ids();
    const int64_t limit = model_->dims().max_positions;
    // Oldest turns go first when the conversation outgrows the position table.
    while (limit > 0 && static_cast<int64_t>(ids.size()) + sampling_.max_new_tokens > limit && history_.size() > 1) {
      history_.erase(history_.begin(), history_.begin() + std::min<size_t>(2, history_.size() - 1));
      std::cerr << "(dropped the oldest turn: the conversation exceeds the model's " << limit << " positions)\n";
      ids = prompt_ids();
    }
    if (limit > 0 && static_cast<int64_t>(ids.size()) + sampling_.max_new_tokens > limit) {
      history_.pop_back();
      throw CommandError(fmt::format("the message takes {} tokens; with --max-new-tokens {} that exceeds the "
                                     "model's {} positions",
                                     ids.size(), sampling_.max_new_tokens, limit));
    }

    AnswerStream stream(out, template_ ? std::nullopt : std::optional<std::string>(kDeepSpeedChatUserMarker));
    std::vector<int64_t> answer_ids;
    SamplingOptions options = sampling_;
    options.on_step = [&](int64_t, const at::Tensor& tokens, const at::Tensor&) {
      if (generation::is_eos(tokens, options)[0].item<bool>()) return true;  // the generator ends the row itself
      answer_ids.push_back(tokens[0].item<int64_t>());
      return stream.update(tokenizer_->decode(answer_ids, /*skip_special_tokens=*/true));
    };
    auto prompt = at::tensor(ids, at::kLong).unsqueeze(0);
    generator_->generate(*model_, prompt, at::ones_like(prompt), options);
    std::string answer = stream.finish(tokenizer_->decode(answer_ids, /*skip_special_tokens=*/true));
    history_.push_back({"assistant", template_ ? trim_leading_space(answer) : answer});
  }

 private:
  std::vector<int64_t> prompt_ids() const {
    std::vector<ChatMessage> messages;
    if (!system_.empty()) messages.push_back({"system", system_});
    messages.insert(messages.end(), history_.begin(), history_.end());
    if (template_) return tokenizer_->encode(template_->render(messages, true), /*add_special_tokens=*/false);
    return tokenizer_->encode(deepspeed_chat_prompt(messages));
  }
  static std::string trim_leading_space(const std::string& s) {
    return s.substr(std::min(s.find_first_not_of(" \n"), s.size()));
  }

  std::shared_ptr<CausalLM> model_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::optional<ChatTemplate> template_;
  std::shared_ptr<Generator> generator_;
  SamplingOptions sampling_;
  std::string system_;
  std::vector<ChatMessage> history_;
};

int chat(const std::vector<std::string>& args) {
  po::options_description options("options");
  options.add_options()("model", po::value<std::string>()->required(),
                        "HF model folder (config.json, safetensors, tokenizer) or Hub id org/name[@revision]")(
      "system", po::value<std::string>()->default_value(""), "a system message put before the conversation");
  options.add(sampling_flags(128));
  auto vm = parse_flags("chat", options, {}, args, kSynopsis);
  if (!vm) return 0;
  const auto dtype = dtype_flag(*vm);
  const auto dir = resolve_model_flag((*vm)["model"].as<std::string>(), "--model");
  // Everything that can be wrong with the folder is found before the weights are read.
  auto tokenizer = load_tokenizer(dir, "--model");
  auto chat_template = ChatTemplate::from_dir(dir);
  PluginRegistry registry;
  registry.discover(PluginRegistry::search_paths({}));
  auto generator = make_generator(registry, *vm);
  auto model = load_causal_lm(registry, dir, dtype, "--model", device_flag(*vm));
  ChatSession session(model, tokenizer, chat_template, generator, sampling_for(*generator, *tokenizer, *vm, dir),
                      (*vm)["system"].as<std::string>());

  const bool interactive = ::isatty(STDIN_FILENO) != 0;
  if (interactive)
    std::cout << fmt::format("dschat chat: {} ({}). `clear` resets the history, `quit` or Ctrl-D ends.\n",
                             dir.string(), chat_template ? "chat template" : "DeepSpeed-Chat Human/Assistant format");
  std::string line;
  while (true) {
    if (interactive) std::cout << "user> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line == "quit" || line == "exit") break;
    if (line == "clear") {
      session.clear();
      std::cout << "(history cleared)\n";
      continue;
    }
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::cout << "assistant> " << std::flush;
    try {
      session.answer(line, std::cout);
    } catch (const CommandError& e) {  // one message too long: say so and keep the conversation
      std::cout << "\n";
      std::cerr << "dschat chat: " << e.what() << "\n";
    }
  }
  if (interactive) std::cout << "\n";
  return 0;
}

const bool registered = register_guarded_command("chat", chat);

}  // namespace
}  // namespace dschat
