#pragma once
// Chat prompts: the model's own HF chat template (a Jinja program in tokenizer_config.json, run by llama.cpp's
// Jinja engine) or, for a model without one, DeepSpeed-Chat's " Human: ... Assistant:" format, which is also
// what dschat's pipelines train on.
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace jinja {
struct program;
}

namespace dschat {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

// A template that does not parse or fails while rendering; the message names the file and the reason.
class ChatTemplateError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ChatTemplate {
 public:
  // dir/tokenizer_config.json's "chat_template" (a string, or a list of {name, template} of which "default" is
  // used), else dir/chat_template.jinja; nullopt when the folder has neither. Parsed here, so a broken template
  // is an error before any model is loaded.
  static std::optional<ChatTemplate> from_dir(const std::filesystem::path& dir);
  // source: the Jinja text; origin names it in errors. bos/eos fill the template's bos_token / eos_token.
  ChatTemplate(std::string source, std::string origin, std::string bos_token, std::string eos_token);

  // The conversation as the model expects it; add_generation_prompt appends the assistant's opening, as
  // transformers' apply_chat_template(..., add_generation_prompt=True) does. The text is then tokenized without
  // adding special tokens (the template writes them).
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  const std::string& origin() const { return origin_; }

 private:
  std::string source_, origin_, bos_token_, eos_token_;
  std::shared_ptr<const jinja::program> program_;  // parsed once; rendering only reads it
};

// DeepSpeed-Chat's format: " Human: {user} Assistant: {assistant}" per turn, ending in " Assistant:" for the
// answer to come. System messages are put first as plain text.
std::string deepspeed_chat_prompt(const std::vector<ChatMessage>& messages);

// Where a DeepSpeed-Chat style answer ends: the model starting the next " Human:" turn.
inline constexpr const char* kDeepSpeedChatUserMarker = "Human:";

}  // namespace dschat
