// Hub ids: the cache transformers writes is found (offline), dschat's downloads land in a cache transformers
// reads, and the faults users meet (interrupted transfer, corrupt bytes, unknown id, no network, half-written
// cache, gated model) each end in a clear error or a recovery. The Hub is tests/scripts/fake_hub.py on loopback,
// serving the Hub's routes and headers (this machine has no internet); the client is the one users run.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "dschat/framework/hub.h"

namespace fs = std::filesystem;
using dschat::HubError;
using dschat::HubId;
using dschat::HubSettings;
using dschat::testing::run_command;
using dschat::testing::run_dschat;

namespace {

const fs::path kOut = fs::path(DSCHAT_BINARY_DIR) / "test-output" / "hub";
const std::string kPython = DSCHAT_TEST_PYTHON;
const std::string kScripts = std::string(DSCHAT_SOURCE_DIR) + "/tests/scripts";
const std::string kPrompt = "Human: what is the capital of France? Assistant:";

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<nlohmann::json> log_rows(const fs::path& log) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

// The fake Hub as a child process, stopped when this goes out of scope.
class FakeHub {
 public:
  explicit FakeHub(const std::string& name, const std::string& faults = "") : dir_(kOut / "servers" / name) {
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    const std::string command =
        fmt::format("exec {} {}/fake_hub.py {} --port-file {} --log {} {} > {} 2>&1", kPython, kScripts,
                    (kOut / "repos").string(), (dir_ / "port").string(), log().string(), faults,
                    (dir_ / "server.out").string());
    pid_ = fork();
    if (pid_ == 0) {
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 300 && !fs::exists(dir_ / "port"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!fs::exists(dir_ / "port")) ADD_FAILURE() << "the fake hub did not start: " << read_text(dir_ / "server.out");
    port_ = read_text(dir_ / "port");
  }
  ~FakeHub() {
    kill(pid_, SIGTERM);
    waitpid(pid_, nullptr, 0);
  }
  std::string endpoint() const { return "http://127.0.0.1:" + port_; }
  fs::path log() const { return dir_ / "requests.jsonl"; }

 private:
  fs::path dir_;
  pid_t pid_ = -1;
  std::string port_;
};

class Hub : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    fs::create_directories(kOut);
    auto made = run_command(fmt::format("{} {}/hub_fixture.py repos {}", kPython, kScripts, (kOut / "repos").string()));
    ASSERT_EQ(made.exit_code, 0) << made.output;
  }

  // A fresh, empty cache folder for one test.
  static fs::path fresh_cache(const std::string& name) {
    fs::path cache = kOut / "caches" / name;
    fs::remove_all(cache);
    fs::create_directories(cache);
    return cache;
  }

  HubSettings settings(const fs::path& cache, const std::string& endpoint) {
    HubSettings s;
    s.cache_dir = cache;
    s.endpoint = endpoint;
    s.timeout_s = 5;
    s.max_attempts = 3;
    s.progress = [this](const std::string& line) { progress_ += line + "\n"; };
    return s;
  }

  static nlohmann::json transformers_greedy(const std::string& repo, const std::string& env) {
    auto result = run_command(fmt::format("{} {} {}/hub_fixture.py greedy {} '{}' 12", env, kPython, kScripts, repo,
                                          kPrompt));
    EXPECT_EQ(result.exit_code, 0) << result.output;
    const size_t brace = result.output.rfind("\n{");
    return nlohmann::json::parse(result.output.substr(brace == std::string::npos ? 0 : brace + 1));
  }

  static std::string dschat_greedy(const std::string& model, const std::string& env) {
    auto result = run_dschat(fmt::format("generate --model {} --prompt '{}' --greedy --max-new-tokens 12", model,
                                         kPrompt), env);
    EXPECT_EQ(result.exit_code, 0) << result.output;
    // The answer is the last line; download progress goes before it.
    std::string out = result.output;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out.substr(out.rfind('\n') == std::string::npos ? 0 : out.rfind('\n') + 1);
  }

  static std::string blob_etag(const fs::path& snapshot_file) {
    return fs::read_symlink(snapshot_file).filename().string();
  }

  std::string progress_;
};

TEST(HubIds, ParseOrgNameAndRevision) {
  auto id = HubId::parse("facebook/opt-1.3b");
  ASSERT_TRUE(id);
  EXPECT_EQ(id->repo, "facebook/opt-1.3b");
  EXPECT_EQ(id->revision, "main");
  EXPECT_EQ(id->folder_name(), "models--facebook--opt-1.3b");
  auto pinned = HubId::parse("HuggingFaceTB/SmolLM2-135M-Instruct@v1.0");
  ASSERT_TRUE(pinned);
  EXPECT_EQ(pinned->revision, "v1.0");
  EXPECT_EQ(pinned->str(), "HuggingFaceTB/SmolLM2-135M-Instruct@v1.0");
  for (const char* bad : {"opt-125m", "a/b/c", "../x", "a/..", "org/-name", "org/na--me", "org/name@", "org/name@a..b",
                          "org/na me", "/abs/path", "runs/q/sft/final", ""})
    EXPECT_FALSE(HubId::parse(bad)) << bad;
}

TEST(HubIds, SettingsFollowHuggingfaceHubsEnvironment) {
  const fs::path home = kOut / "env-home";
  fs::create_directories(home);
  std::ofstream(home / "token") << "hf_fromfile\n";
  for (const char* v : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                        "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "XDG_CACHE_HOME"})
    unsetenv(v);
  setenv("HF_HOME", home.c_str(), 1);
  auto s = HubSettings::from_environment();
  EXPECT_EQ(s.cache_dir, home / "hub");
  EXPECT_EQ(s.token.value_or(""), "hf_fromfile");
  EXPECT_EQ(s.endpoint, "https://huggingface.co");
  EXPECT_FALSE(s.offline);
  setenv("HF_HUB_CACHE", "/elsewhere", 1);
  setenv("HF_TOKEN", "hf_env", 1);
  setenv("HF_HUB_OFFLINE", "yes", 1);
  setenv("HF_ENDPOINT", "http://mirror.local/", 1);
  s = HubSettings::from_environment();
  EXPECT_EQ(s.cache_dir, "/elsewhere");
  EXPECT_EQ(s.token.value_or(""), "hf_env");
  EXPECT_TRUE(s.offline);
  EXPECT_EQ(s.endpoint, "http://mirror.local");
  for (const char* v : {"HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT"}) unsetenv(v);
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  EXPECT_EQ(HubSettings::from_environment().cache_dir, "/xdg/huggingface/hub");
  unsetenv("XDG_CACHE_HOME");
}

// transformers downloads (with huggingface_hub's own code); dschat then finds the snapshot offline, with no Hub
// running at all, and its greedy answer is transformers'.
TEST_F(Hub, FindsTheSnapshotTransformersDownloaded) {
  const fs::path cache = fresh_cache("written-by-transformers");
  nlohmann::json expected;
  nlohmann::json sharded;
  {
    FakeHub hub("transformers");
    const std::string env = fmt::format("HF_ENDPOINT={} HF_HUB_CACHE={}", hub.endpoint(), cache.string());
    expected = transformers_greedy("testorg/tiny-opt", env);
    sharded = transformers_greedy("testorg/tiny-sharded", env);
  }
  auto s = settings(cache, "http://127.0.0.1:1");
  s.offline = true;
  EXPECT_EQ(dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), s), fs::path(expected["snapshot"]));
  EXPECT_EQ(dschat::resolve_hub_model(*HubId::parse("testorg/tiny-sharded"), s), fs::path(sharded["snapshot"]));
  const std::string commit = fs::path(expected["snapshot"].get<std::string>()).filename();
  EXPECT_EQ(dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt@" + commit), s), fs::path(expected["snapshot"]));

  const std::string env = fmt::format("HF_HUB_OFFLINE=1 HF_ENDPOINT=http://127.0.0.1:1 HF_HUB_CACHE={}", cache.string());
  EXPECT_EQ(dschat_greedy("testorg/tiny-opt", env), expected["text"].get<std::string>());
  EXPECT_EQ(dschat_greedy("testorg/tiny-sharded", env), sharded["text"].get<std::string>());
  std::cout << "transformers and dschat, from the cache: " << expected["text"] << "\n";
}

// dschat downloads (sharded weights, every shard); the layout is huggingface_hub's, transformers loads it offline
// and answers as dschat does; a second resolve asks the Hub nothing.
TEST_F(Hub, DownloadsIntoTheCacheTransformersReads) {
  const fs::path cache = fresh_cache("written-by-dschat");
  FakeHub hub("dschat-download");
  const fs::path snapshot = dschat::resolve_hub_model(*HubId::parse("testorg/tiny-sharded"), settings(cache, hub.endpoint()));
  const fs::path repo = cache / "models--testorg--tiny-sharded";
  EXPECT_EQ(read_text(repo / "refs" / "main"), snapshot.filename().string());
  for (const char* file : {"config.json", "model.safetensors.index.json", "model-00001-of-00004.safetensors",
                           "model-00004-of-00004.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    ASSERT_TRUE(fs::is_symlink(snapshot / file)) << file;
    EXPECT_EQ(fs::read_symlink(snapshot / file).parent_path(), fs::path("../../blobs")) << file;
    EXPECT_TRUE(fs::is_regular_file(snapshot / file)) << file;
  }
  EXPECT_EQ(blob_etag(snapshot / "model-00001-of-00004.safetensors").size(), 64u);  // LFS: named by sha256
  EXPECT_EQ(blob_etag(snapshot / "config.json").size(), 40u);                       // git sha1
  EXPECT_TRUE(fs::exists(repo / ".no_exist" / snapshot.filename() / "model.safetensors"));
  EXPECT_TRUE(fs::exists(repo / ".no_exist" / snapshot.filename() / "special_tokens_map.json"));
  EXPECT_NE(progress_.find("model-00001-of-00004.safetensors done"), std::string::npos) << progress_;
  EXPECT_NE(progress_.find("sha256 verified"), std::string::npos) << progress_;

  const size_t requests = log_rows(hub.log()).size();
  EXPECT_EQ(dschat::resolve_hub_model(*HubId::parse("testorg/tiny-sharded"), settings(cache, hub.endpoint())), snapshot);
  EXPECT_EQ(log_rows(hub.log()).size(), requests) << "a complete cached snapshot must not cost a request";

  const std::string offline = fmt::format("HF_HUB_OFFLINE=1 HF_ENDPOINT=http://127.0.0.1:1 HF_HUB_CACHE={}", cache.string());
  auto expected = transformers_greedy("testorg/tiny-sharded", offline);
  EXPECT_EQ(fs::path(expected["snapshot"]), snapshot);
  EXPECT_EQ(dschat_greedy("testorg/tiny-sharded", offline), expected["text"].get<std::string>());
}

// The connection drops 500 kB into the weights: the client resumes with a Range request and the blob verifies.
// A partial file left by a killed process is resumed the same way.
TEST_F(Hub, ResumesAnInterruptedDownload) {
  const fs::path cache = fresh_cache("resume");
  FakeHub hub("resume", "--cut model.safetensors:500000");
  const fs::path snapshot = dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), settings(cache, hub.endpoint()));
  bool resumed = false;
  for (const auto& row : log_rows(hub.log()))
    if (row["range"].is_string() && row["range"] == "bytes=500000-" && row["status"] == 206) resumed = true;
  EXPECT_TRUE(resumed) << read_text(hub.log());
  EXPECT_NE(progress_.find("interrupted at 500.0 kB"), std::string::npos) << progress_;
  EXPECT_EQ(fs::file_size(snapshot / "model.safetensors"), fs::file_size(kOut / "repos/testorg/tiny-opt/model.safetensors"));

  // A killed process leaves blobs/<sha256>.incomplete; the next run continues from its length.
  const std::string etag = blob_etag(snapshot / "model.safetensors");
  const fs::path cache2 = fresh_cache("resume-after-kill");
  const fs::path blobs = cache2 / "models--testorg--tiny-opt" / "blobs";
  fs::create_directories(blobs);
  {
    std::ifstream in(kOut / "repos/testorg/tiny-opt/model.safetensors", std::ios::binary);
    std::string head(1000000, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    std::ofstream(blobs / (etag + ".incomplete"), std::ios::binary) << head;
  }
  FakeHub clean("resume-after-kill");
  const fs::path snapshot2 = dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), settings(cache2, clean.endpoint()));
  bool continued = false;
  for (const auto& row : log_rows(clean.log()))
    if (row["range"].is_string() && row["range"] == "bytes=1000000-") continued = true;
  EXPECT_TRUE(continued) << read_text(clean.log());
  EXPECT_FALSE(fs::exists(blobs / (etag + ".incomplete")));
  EXPECT_EQ(read_text(snapshot2 / "model.safetensors"), read_text(kOut / "repos/testorg/tiny-opt/model.safetensors"));
}

TEST_F(Hub, RefusesBytesThatDoNotMatchTheChecksum) {
  const fs::path cache = fresh_cache("corrupt");
  FakeHub hub("corrupt", "--corrupt model.safetensors");
  try {
    dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), settings(cache, hub.endpoint()));
    FAIL() << "corrupt weights were accepted";
  } catch (const HubError& e) {
    EXPECT_NE(std::string(e.what()).find("testorg/tiny-opt: model.safetensors is corrupt (sha256 mismatch"),
              std::string::npos) << e.what();
  }
  // Nothing of it stays: no blob, no partial file, no snapshot entry.
  for (const auto& entry : fs::recursive_directory_iterator(cache))
    EXPECT_EQ(entry.path().string().find("model.safetensors"), std::string::npos) << entry.path();
  for (const auto& entry : fs::directory_iterator(cache / "models--testorg--tiny-opt" / "blobs"))
    EXPECT_LT(entry.path().filename().string().size(), 64u) << entry.path();  // <sha256>[.incomplete]: weights
}

TEST_F(Hub, BadIdsAndMissingNetworkSayWhat) {
  const fs::path cache = fresh_cache("errors");
  FakeHub hub("errors");
  auto message = [&](const std::string& id, HubSettings s) {
    try {
      dschat::resolve_hub_model(*HubId::parse(id), s);
    } catch (const HubError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message("testorg/no-such-model", settings(cache, hub.endpoint())).find(
                "testorg/no-such-model: no model of that name on " + hub.endpoint()),
            std::string::npos);
  EXPECT_NE(message("testorg/tiny-opt@v9", settings(cache, hub.endpoint())).find("the model has no revision 'v9'"),
            std::string::npos);
  const std::string offline_msg = [&] {
    auto s = settings(cache, hub.endpoint());
    s.offline = true;
    return message("testorg/tiny-opt", s);
  }();
  EXPECT_NE(offline_msg.find("testorg/tiny-opt: not in the HF cache"), std::string::npos) << offline_msg;
  EXPECT_NE(offline_msg.find((cache / "models--testorg--tiny-opt" / "refs" / "main").string()), std::string::npos)
      << offline_msg;
  EXPECT_NE(offline_msg.find("HF_HUB_OFFLINE=1"), std::string::npos) << offline_msg;
  const std::string unreachable = message("testorg/tiny-opt", settings(cache, "http://127.0.0.1:1"));
  EXPECT_NE(unreachable.find("cannot reach http://127.0.0.1:1"), std::string::npos) << unreachable;
  EXPECT_NE(unreachable.find("HF_HUB_OFFLINE=1"), std::string::npos) << unreachable;

  // The same through the command line: exit 2 and the reason.
  auto cli = run_dschat(fmt::format("generate --model testorg/no-such-model --prompt hi"),
                        fmt::format("HF_ENDPOINT={} HF_HUB_CACHE={}", hub.endpoint(), cache.string()));
  EXPECT_EQ(cli.exit_code, 2) << cli.output;
  EXPECT_NE(cli.output.find("--model: testorg/no-such-model: no model of that name"), std::string::npos) << cli.output;
  auto neither = run_dschat("generate --model no/such/folder --prompt hi");
  EXPECT_EQ(neither.exit_code, 2) << neither.output;
  EXPECT_NE(neither.output.find("'no/such/folder' is neither an existing file or folder nor a Hub model id"),
            std::string::npos) << neither.output;
}

// A cache entry whose weights link points at a blob that is gone (a download killed between link and blob, or a
// cleaned blobs/ folder): offline names what is missing; online repairs it.
TEST_F(Hub, HalfWrittenCacheEntryIsNamedOfflineAndRepairedOnline) {
  const fs::path cache = fresh_cache("half-written");
  FakeHub hub("half-written");
  const fs::path snapshot = dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), settings(cache, hub.endpoint()));
  fs::remove(fs::path(cache / "models--testorg--tiny-opt" / "blobs") / blob_etag(snapshot / "model.safetensors"));
  auto offline = settings(cache, hub.endpoint());
  offline.offline = true;
  try {
    dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), offline);
    FAIL() << "an incomplete snapshot was used";
  } catch (const HubError& e) {
    EXPECT_NE(std::string(e.what()).find("is incomplete (missing: model.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_EQ(dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), settings(cache, hub.endpoint())), snapshot);
  EXPECT_TRUE(fs::is_regular_file(snapshot / "model.safetensors"));
}

// A gated model needs the token; it goes to the Hub only, never to the CDN host the weights redirect to.
TEST_F(Hub, GatedModelNeedsTheTokenAndTheCdnNeverSeesIt) {
  const fs::path cache = fresh_cache("gated");
  FakeHub hub("gated", "--gated testorg/tiny-opt --token hf_secret");
  auto s = settings(cache, hub.endpoint());
  try {
    dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), s);
    FAIL() << "no token, yet the gated model downloaded";
  } catch (const HubError& e) {
    EXPECT_NE(std::string(e.what()).find("the model is gated: accept its terms at " + hub.endpoint() +
                                         "/testorg/tiny-opt and set HF_TOKEN"),
              std::string::npos) << e.what();
  }
  s.token = "hf_wrong";
  try {
    dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), s);
    FAIL() << "a wrong token was accepted";
  } catch (const HubError& e) {
    EXPECT_NE(std::string(e.what()).find("check that HF_TOKEN belongs to the account"), std::string::npos) << e.what();
  }
  s.token = "hf_secret";
  EXPECT_TRUE(fs::is_regular_file(dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), s) / "model.safetensors"));
  int cdn_requests = 0;
  for (const auto& row : log_rows(hub.log())) {
    if (row["path"].get<std::string>().rfind("/cdn/", 0) != 0) continue;
    ++cdn_requests;
    EXPECT_TRUE(row["authorization"].is_null()) << row.dump();
  }
  EXPECT_GT(cdn_requests, 0);
}

// A pipeline names its models by id: validate resolves them (offline, from the cache); a bad id is reported at
// the key, with the file and line.
TEST_F(Hub, PipelineModelsMayBeHubIds) {
  const fs::path cache = fresh_cache("pipeline");
  {
    FakeHub hub("pipeline");
    dschat::resolve_hub_model(*HubId::parse("testorg/tiny-opt"), settings(cache, hub.endpoint()));
  }
  const fs::path file = kOut / "hub-pipeline.toml";
  auto write = [&](const std::string& id) {
    std::ofstream(file) << fmt::format(R"([pipeline]
name = "hub"
output_dir = "{}"

[models.actor]
path = "{}"

[data]
datasets = ["{}/configs/quickstart/data/requests.jsonl"]
max_seq_len = 96
max_prompt_seq_len = 32

[[stage]]
name = "sft"
algorithm = "sft"
model = "actor"
)",
                                       (kOut / "hub-run").string(), id, DSCHAT_SOURCE_DIR);
  };
  const std::string env = fmt::format("HF_HUB_OFFLINE=1 HF_HUB_CACHE={}", cache.string());
  write("testorg/tiny-opt");
  auto ok = run_dschat("validate " + file.string(), env);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("models--testorg--tiny-opt/snapshots/"), std::string::npos) << ok.output;
  write("testorg/not-cached");
  auto bad = run_dschat("validate " + file.string(), env);
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  EXPECT_NE(bad.output.find(file.string() + ":6"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("models.actor.path"), std::string::npos) << bad.output;
  EXPECT_NE(bad.output.find("testorg/not-cached: not in the HF cache"), std::string::npos) << bad.output;
}

}  // namespace
