// Chat templates as real models ship them, rendered by dschat (llama.cpp's Jinja engine) and by transformers'
// apply_chat_template: the prompts must be the same text, and a template's own raise_exception must reach the user.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/framework/chat_template.h"

namespace fs = std::filesystem;
using dschat::ChatMessage;
using dschat::ChatTemplate;

namespace {

std::string read(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), {}};
}

// A tokenizer folder (the quickstart's BPE) whose tokenizer_config.json carries `name`'s template.
fs::path folder_with_template(const std::string& name) {
  const fs::path dir = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "chat-templates" / name;
  fs::create_directories(dir);
  const fs::path model = fs::path(DSCHAT_SOURCE_DIR) / "configs" / "quickstart" / "model";
  fs::copy_file(model / "tokenizer.json", dir / "tokenizer.json", fs::copy_options::overwrite_existing);
  auto config = nlohmann::json::parse(read(model / "tokenizer_config.json"));
  std::string source = read(fs::path(DSCHAT_SOURCE_DIR) / "tests" / "data" / "chat_templates" / (name + ".jinja"));
  if (source.ends_with('\n')) source.pop_back();  // the file's own last newline is not part of the template
  config["chat_template"] = source;
  config["bos_token"] = "<s>";
  config["eos_token"] = "</s>";
  std::ofstream(dir / "tokenizer_config.json") << config.dump(2);
  return dir;
}

const std::vector<std::vector<ChatMessage>> kConversations = {
    {{"user", "What is the capital of France?"}},
    {{"user", "Hi there!"}, {"assistant", "  Hello! How can I help?  "}, {"user", "Tell me a joke."}},
    {{"system", "Be brief."}, {"user", "Name a colour."}, {"assistant", "Blue."}, {"user", "Another one."}},
};

// transformers' renderings: [conversation][add_generation_prompt] -> text or {"error": message}.
nlohmann::json transformers_renderings(const fs::path& dir) {
  nlohmann::json conversations = nlohmann::json::array();
  for (const auto& c : kConversations) {
    nlohmann::json turns = nlohmann::json::array();
    for (const auto& m : c) turns.push_back({{"role", m.role}, {"content", m.content}});
    conversations.push_back(turns);
  }
  const fs::path input = dir / "conversations.json";
  std::ofstream(input) << conversations.dump();
  const std::string script =
      "import json, sys\n"
      "from transformers import AutoTokenizer\n"
      "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
      "out = []\n"
      "for c in json.load(open(sys.argv[2])):\n"
      "    row = []\n"
      "    for g in (False, True):\n"
      "        try: row.append(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g))\n"
      "        except Exception as e: row.append({'error': str(e)})\n"
      "    out.append(row)\n"
      "print(json.dumps(out))\n";
  std::ofstream(dir / "render.py") << script;
  auto result = dschat::testing::run_command(std::string(DSCHAT_TEST_PYTHON) + " " + (dir / "render.py").string() +
                                             " " + dir.string() + " " + input.string() + " 2>/dev/null");
  EXPECT_EQ(result.exit_code, 0) << result.output;
  return nlohmann::json::parse(result.output.substr(result.output.rfind("\n[")  == std::string::npos
                                                        ? 0 : result.output.rfind("\n[") + 1));
}

class ChatTemplates : public ::testing::TestWithParam<std::string> {};

TEST_P(ChatTemplates, RenderAsTransformersDoes) {
  const fs::path dir = folder_with_template(GetParam());
  auto chat_template = ChatTemplate::from_dir(dir);
  ASSERT_TRUE(chat_template.has_value());
  const auto expected = transformers_renderings(dir);
  ASSERT_EQ(expected.size(), kConversations.size());
  int compared = 0;
  for (size_t c = 0; c < kConversations.size(); ++c) {
    for (int generation_prompt = 0; generation_prompt < 2; ++generation_prompt) {
      const auto& want = expected[c][generation_prompt];
      SCOPED_TRACE(GetParam() + ", conversation " + std::to_string(c) + ", add_generation_prompt " +
                   std::to_string(generation_prompt));
      if (want.is_object()) {  // the template refused the conversation: so must dschat, with its message
        try {
          chat_template->render(kConversations[c], generation_prompt == 1);
          ADD_FAILURE() << "expected the template's error: " << want["error"];
        } catch (const dschat::ChatTemplateError& e) {
          EXPECT_NE(std::string(e.what()).find(want["error"].get<std::string>()), std::string::npos) << e.what();
        }
        continue;
      }
      EXPECT_EQ(chat_template->render(kConversations[c], generation_prompt == 1), want.get<std::string>());
      ++compared;
    }
  }
  EXPECT_GE(compared, 4);
}

INSTANTIATE_TEST_SUITE_P(RealTemplates, ChatTemplates, ::testing::Values("smollm2", "llama3", "zephyr", "mistral"));

TEST(ChatTemplate, AFolderWithoutOneHasNone) {
  EXPECT_FALSE(ChatTemplate::from_dir(fs::path(DSCHAT_SOURCE_DIR) / "configs" / "quickstart" / "model").has_value());
}

TEST(ChatTemplate, ABrokenTemplateIsNamedWhenTheFolderIsRead) {
  const fs::path dir = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "chat-templates" / "broken";
  fs::create_directories(dir);
  std::ofstream(dir / "tokenizer_config.json") << R"({"chat_template": "{% for m in messages %}{{ m.content }"})";
  try {
    ChatTemplate::from_dir(dir);
    FAIL() << "a template that does not parse was accepted";
  } catch (const dschat::ChatTemplateError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "tokenizer_config.json").string() + " (chat_template): the chat "
                                         "template does not parse"),
              std::string::npos) << e.what();
  }
}

TEST(ChatTemplate, DeepSpeedChatFormatForModelsWithoutOne) {
  EXPECT_EQ(dschat::deepspeed_chat_prompt({{"user", "Hi"}}), " Human: Hi Assistant:");
  EXPECT_EQ(dschat::deepspeed_chat_prompt({{"user", "Hi"}, {"assistant", " Hello."}, {"user", "Bye"}}),
            " Human: Hi Assistant: Hello. Human: Bye Assistant:");
}

}  // namespace
