// Tensor-parallel shards (dschat/sdk/tensor_parallel.h) on tiny random OPT (untied, vocab-parallel head), LLaMA
// (grouped-query attention, LoRA folded in) and BLOOM (fused qkv, ALiBi): the TP=2 logits equal the whole
// model's, and greedy kv-cache decoding of a left-padded batch gives the same tokens.
//
// Two ways to run two ranks: two threads of this process over an in-memory communicator (fast, checks the
// layout), and two processes of this binary joined by Gloo on loopback (the real collectives, as a launcher
// would start them: RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "plugin_helpers.h"
#include "test_support.h"
#include "dschat/sdk/distributed.h"
#include "dschat/sdk/frozen_model.h"
#include "dschat/sdk/generation.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/linear.h"
#include "dschat/sdk/strategy.h"
#include "dschat/sdk/tensor_parallel.h"

namespace fs = std::filesystem;
using namespace dschat;
using dschat::testing::error_of;
using dschat::testing::registry;
using dschat::testing::table;

namespace {

constexpr int64_t kNewTokens = 16;

nlohmann::json config(const std::string& family) {
  if (family == "opt") {
    return {{"model_type", "opt"}, {"vocab_size", 64}, {"hidden_size", 32}, {"num_hidden_layers", 2},
            {"num_attention_heads", 4}, {"ffn_dim", 48}, {"max_position_embeddings", 64},
            {"tie_word_embeddings", false}};
  }
  if (family == "llama") {
    return {{"model_type", "llama"}, {"vocab_size", 64}, {"hidden_size", 32}, {"intermediate_size", 40},
            {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
            {"max_position_embeddings", 128}, {"attention_bias", true}};
  }
  return {{"model_type", "bloom"}, {"vocab_size", 64}, {"hidden_size", 32}, {"n_layer", 2}, {"n_head", 4}};
}

std::shared_ptr<ModelFamily> family(const std::string& name) { return registry().create<ModelFamily>(name, table("")); }

// The same weights in every process: a seeded draw, larger than the 0.02 init so that greedy decoding never
// hinges on a near-tie between two logits.
std::shared_ptr<CausalLM> build_full(const ModelFamily& fam, const std::string& name) {
  auto model = fam.build(config(name), {});
  if (name == "llama") enable_lora(*model, {"q_proj", "v_proj", "down_proj"}, LoraOptions{});
  auto gen = generation::make_cpu_generator(17);
  at::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    if (p.dim() >= 2) p.normal_(0.0, 0.25, gen);
    else p.add_(at::randn(p.sizes(), gen, p.options()) * 0.1);
  }
  model->eval();
  return model;
}

// Left-padded prompts with real lengths `lengths`.
std::pair<at::Tensor, at::Tensor> prompts(const std::vector<int64_t>& lengths, int64_t vocab) {
  const int64_t width = *std::max_element(lengths.begin(), lengths.end());
  auto gen = generation::make_cpu_generator(5);
  auto ids = at::randint(3, vocab, {static_cast<int64_t>(lengths.size()), width}, gen, at::kLong);
  auto mask = at::zeros_like(ids);
  for (size_t i = 0; i < lengths.size(); ++i) mask[i].narrow(0, width - lengths[i], lengths[i]).fill_(1);
  return {ids.masked_fill(mask == 0, 1), mask};
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// One rank's side: the shard against the whole model it was cut from (every rank holds that too). Returns the
// shard's greedy tokens for the cross-rank comparison. Only EXPECTs: a rank must not leave the collective
// sequence early while its peer waits.
at::Tensor check_family(const std::string& name, Communicator& group) {
  SCOPED_TRACE(name + ", rank " + std::to_string(group.rank()));
  auto fam = family(name);
  auto full = build_full(*fam, name);
  auto shard = make_tensor_parallel_shard(*fam, *full, group);
  at::NoGradGuard no_grad;
  EXPECT_EQ(shard->tensor_parallel().size, group.size());
  auto block_numel = [](CausalLM& m) {
    int64_t n = 0;
    for (const auto& p : m.block(0).parameters()) n += p.numel();
    return n;
  };
  EXPECT_LT(block_numel(*shard), block_numel(*full) * 3 / 4);  // really split, not a replica
  if (name == "llama") {  // GQA: the shard's cache holds its own kv heads
    EXPECT_EQ(shard->allocate_cache(1, 4).layers.front().key.size(1), 2 / group.size());
  }

  auto [ids, mask] = prompts({7, 3, 5, 1}, full->dims().vocab_size);
  auto expected = full->forward(ids, mask).logits;
  auto logits = shard->forward(ids, mask).logits;
  EXPECT_EQ(logits.sizes(), expected.sizes());
  // Padding positions attend to nothing real; compare where the mask says a token is.
  auto real = mask.unsqueeze(-1).to(at::kBool);
  EXPECT_LT(max_diff(logits.masked_fill(~real, 0), expected.masked_fill(~real, 0)), 1e-5);

  auto kv = registry().create<Generator>("kv-cache", table(""));
  auto options = kv->defaults();
  options.do_sample = false;
  options.max_new_tokens = kNewTokens;
  options.pad_token_id = 1;
  auto reference = kv->generate(*full, ids, mask, options);
  auto out = kv->generate(*shard, ids, mask, options);
  EXPECT_EQ(out.sequences.size(1), ids.size(1) + kNewTokens);
  EXPECT_TRUE(at::equal(out.sequences, reference.sequences)) << out.sequences << "\n" << reference.sequences;
  EXPECT_LT(max_diff(out.logprobs, reference.logprobs), 1e-5);

  // A training step later: refreshing copies the new slices in place.
  for (auto& p : full->parameters()) p.mul_(1.05);
  refresh_tensor_parallel_shard(*shard, *fam, *full);
  expected = full->forward(ids, mask).logits;
  logits = shard->forward(ids, mask).logits;
  EXPECT_LT(max_diff(logits.masked_fill(~real, 0), expected.masked_fill(~real, 0)), 1e-5);
  return out.sequences;
}

// ---- two ranks as two threads --------------------------------------------------------------------------------

// What the threads share: one slot per rank and a barrier that gives up (instead of hanging) when a peer died.
struct ThreadGroup {
  explicit ThreadGroup(int size) : slots(size) {}
  void sync() {
    std::unique_lock lock(mutex);
    const int64_t generation = epoch;
    if (++arrived == static_cast<int>(slots.size())) {
      arrived = 0;
      ++epoch;
      cv.notify_all();
      return;
    }
    if (!cv.wait_for(lock, std::chrono::seconds(60), [&] { return epoch != generation; })) {
      throw std::runtime_error("thread group: a peer did not reach the collective");
    }
  }
  std::vector<at::Tensor> slots;
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  int64_t epoch = 0;
};

class ThreadCommunicator : public Communicator {
 public:
  ThreadCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_.slots.size()); }
  std::string backend() const override { return "threads"; }
  double timeout_s() const override { return 60; }
  PendingCollective all_reduce_async(at::Tensor& tensor) override {
    auto sum = exchange(tensor, [](const std::vector<at::Tensor>& all) {
      auto total = all[0].clone();
      for (size_t r = 1; r < all.size(); ++r) total.add_(all[r]);  // same order on every rank: same bits
      return total;
    });
    tensor.copy_(sum);
    return {};
  }
  PendingCollective all_gather_async(at::Tensor& full, const at::Tensor& shard) override {
    auto gathered = exchange(shard, [](const std::vector<at::Tensor>& all) {
      std::vector<at::Tensor> flat;
      for (const auto& t : all) flat.push_back(t.reshape({-1}));
      return at::cat(flat);
    });
    full.view({-1}).copy_(gathered);
    return {};
  }
  void all_reduce_max(at::Tensor&) override { unused("all_reduce_max"); }
  PendingCollective reduce_scatter_async(at::Tensor&, const at::Tensor&) override { unused("reduce_scatter"); }
  void broadcast(at::Tensor&, int) override { unused("broadcast"); }
  void barrier() override { group_.sync(); }

 private:
  // Every rank publishes its tensor, each computes the result from all of them, and nobody overwrites its slot
  // before every peer has read it.
  at::Tensor exchange(const at::Tensor& mine, const std::function<at::Tensor(const std::vector<at::Tensor>&)>& f) {
    group_.slots[rank_] = mine;
    group_.sync();
    auto result = f(group_.slots);
    group_.sync();
    return result;
  }
  [[noreturn]] static void unused(const char* what) { throw std::logic_error(std::string(what) + ": not used here"); }
  ThreadGroup& group_;
  int rank_;
};

class TensorParallelThreads : public ::testing::TestWithParam<std::string> {};

// Runs `body` as rank 0 and rank 1 of a two-thread group; each rank's failure (an exception) is reported.
void on_two_threads(const std::function<void(Communicator&)>& body) {
  ThreadGroup group(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      ThreadCommunicator comm(group, rank);
      errors[rank] = error_of([&] { body(comm); });
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors[0], "<no error>");
  EXPECT_EQ(errors[1], "<no error>");
}

TEST_P(TensorParallelThreads, TwoRanksMatchTheWholeModel) {
  std::vector<at::Tensor> tokens(2);
  on_two_threads([&](Communicator& comm) { tokens[comm.rank()] = check_family(GetParam(), comm); });
  if (tokens[0].defined() && tokens[1].defined()) EXPECT_TRUE(at::equal(tokens[0], tokens[1]));
}

INSTANTIATE_TEST_SUITE_P(Families, TensorParallelThreads, ::testing::Values("opt", "llama", "bloom"));

// A trainable shard's gradients are the whole model's: its slice of each split parameter, the whole gradient of
// each replicated one (f / g / the head's gather are the conjugates of the forward collectives), and gathering
// the shards back gives the whole model's weights.
void check_trainable(const std::string& name, Communicator& group) {
  SCOPED_TRACE(name + ", rank " + std::to_string(group.rank()));
  auto fam = family(name);
  auto full = fam->build(config(name), {});
  {
    auto gen = generation::make_cpu_generator(17);
    at::NoGradGuard no_grad;
    for (auto& p : full->parameters()) p.normal_(0.0, p.dim() >= 2 ? 0.25 : 0.1, gen);
  }
  full->eval();  // gradients without dropout: the shard draws no masks the whole model would
  auto shard = make_tensor_parallel_shard(*fam, *full, group, {/*trainable=*/true});
  auto [ids, mask] = prompts({7, 3, 5, 1}, full->dims().vocab_size);
  auto loss_of = [&](CausalLM& model) {  // every position, every logit: each split and replicated weight gets a share
    auto logits = model.forward(ids, mask).logits;
    return (logits.pow(2) * mask.unsqueeze(-1)).sum() / 100.0 + logits.select(-1, 3).sum();
  };
  auto whole_loss = loss_of(*full);
  whole_loss.backward();
  auto shard_loss = loss_of(*shard);
  EXPECT_LT(std::abs(shard_loss.item<double>() - whole_loss.item<double>()), 1e-4 * std::abs(whole_loss.item<double>()));
  shard_loss.backward();
  const auto full_params = full->named_parameters();
  int split = 0;
  for (const auto& item : shard->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    at::Tensor expected = full_params[item.key()].grad();
    for (int64_t d = 0; d < expected.dim(); ++d) {
      const int64_t part = item.value().size(d);
      if (part != expected.size(d)) {
        expected = expected.narrow(d, group.rank() * part, part);
        ++split;
      }
    }
    const double scale = std::max(expected.abs().max().item<double>(), 1e-3);
    EXPECT_LT(max_diff(item.value().grad(), expected) / scale, 1e-4) << item.key();
  }
  EXPECT_GE(split, 4);  // q/k/v (or qkv), out, fc1/up, fc2/down of every block at least
  // Trained slices back into a model of the same shape.
  {
    at::NoGradGuard no_grad;
    for (auto& p : shard->parameters()) p.add_(0.5);
  }
  auto back = fam->build(config(name), {});
  gather_tensor_parallel_shard(*shard, *fam, *back, group);
  const auto back_params = back->named_parameters();
  for (const auto& item : full_params) {
    EXPECT_LT(max_diff(back_params[item.key()], item.value() + 0.5), 1e-6) << item.key();
  }
}

TEST_P(TensorParallelThreads, TrainableShardsGiveTheWholeModelsGradients) {
  on_two_threads([this](Communicator& comm) { check_trainable(GetParam(), comm); });
}

// Frozen models under ZeRO-3 (frozen_model.h): the blocks hold nothing between forward passes (each rank keeps
// its slice apart) and the logits are the whole model's, pass after pass.
void check_frozen_sharding(const std::string& name, Communicator& group) {
  SCOPED_TRACE(name + ", rank " + std::to_string(group.rank()));
  auto fam = family(name);
  auto model = build_full(*fam, name);
  auto [ids, mask] = prompts({7, 3, 5, 1}, model->dims().vocab_size);
  at::NoGradGuard no_grad;
  auto expected = model->forward(ids, mask).logits;
  const std::string how = place_frozen_blocks(*model, at::kCPU, {}, &group);
  EXPECT_EQ(how, "blocks sharded over 2 ranks");
  for (const auto& p : model->block(0).parameters()) EXPECT_EQ(p.numel(), 0);
  for (int pass = 0; pass < 2; ++pass) {
    auto logits = model->forward(ids, mask).logits;
    EXPECT_LT(max_diff(logits, expected), 1e-6) << "pass " << pass;
  }
  for (const auto& p : model->block(1).parameters()) EXPECT_EQ(p.numel(), 0);
}

TEST_P(TensorParallelThreads, FrozenModelsShardTheirBlocks) {
  on_two_threads([this](Communicator& comm) { check_frozen_sharding(GetParam(), comm); });
}

// ---- two ranks as two Gloo processes ------------------------------------------------------------------------

constexpr const char* kWorkerDirEnv = "DSCHAT_TP_WORKER_DIR";
const std::vector<std::string> kFamilies = {"opt", "llama", "bloom"};

std::string tensor_text(const at::Tensor& t) {
  std::ostringstream out;
  auto flat = t.contiguous().view({-1});
  out << t.sizes() << ":";
  for (int64_t i = 0; i < flat.numel(); ++i) out << " " << flat[i].item<int64_t>();
  return out.str();
}

std::string read_file(const fs::path& file) {
  std::ifstream in(file);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The body of one rank, run by the processes TwoRanksMatchOneRank starts; skipped in a plain test run.
TEST(TensorParallelWorker, Rank) {
  const char* dir = std::getenv(kWorkerDirEnv);
  if (dir == nullptr) GTEST_SKIP() << "started by TensorParallelGloo.TwoRanksMatchOneRank";
  DistributedOptions options;
  options.backend = "gloo";
  options.timeout_s = 120;
  init_world(detect_launch_environment(), options);
  auto& group = world();
  ASSERT_EQ(group.size(), 2);
  ASSERT_EQ(group.backend(), "gloo");
  for (const auto& name : kFamilies) {
    auto tokens = check_family(name, group);
    std::ofstream(fs::path(dir) / ("rank" + std::to_string(group.rank()) + "-" + name + ".txt")) << tensor_text(tokens);
  }
  group.barrier();
}

int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t length = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    if (fd >= 0) ::close(fd);
    return 29577;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(TensorParallelGloo, TwoRanksMatchOneRank) {
  const fs::path dir = fs::path(DSCHAT_BINARY_DIR) / "test-data" / ("tensor-parallel-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path exe = fs::read_symlink("/proc/self/exe");
  const int port = free_port();
  std::ostringstream script;
  for (int rank = 0; rank < 2; ++rank) {
    script << "(RANK=" << rank << " LOCAL_RANK=" << rank << " WORLD_SIZE=2 LOCAL_WORLD_SIZE=2"
           << " MASTER_ADDR=127.0.0.1 MASTER_PORT=" << port << " " << kWorkerDirEnv << "=" << dir
           << " OMP_NUM_THREADS=1 timeout 600 " << exe << " --gtest_filter=TensorParallelWorker.Rank > "
           << dir / ("rank" + std::to_string(rank) + ".log") << " 2>&1; echo $? > "
           << dir / ("rank" + std::to_string(rank) + ".rc") << ") &\n";
  }
  script << "wait\n";
  std::ofstream(dir / "run.sh") << script.str();
  ASSERT_EQ(std::system(("bash " + (dir / "run.sh").string()).c_str()), 0);
  for (int rank = 0; rank < 2; ++rank) {
    const auto r = std::to_string(rank);
    EXPECT_EQ(read_file(dir / ("rank" + r + ".rc")), "0\n")
        << "rank " << r << " failed:\n" << read_file(dir / ("rank" + r + ".log"));
  }
  for (const auto& name : kFamilies) {
    const auto rank0 = read_file(dir / ("rank0-" + name + ".txt")), rank1 = read_file(dir / ("rank1-" + name + ".txt"));
    EXPECT_FALSE(rank0.empty()) << name << ": rank 0 wrote no tokens";
    EXPECT_EQ(rank0, rank1) << name << ": the ranks decoded different tokens";
  }
  if (!HasFailure()) fs::remove_all(dir);
}

// ---- one process ------------------------------------------------------------------------------------------------

TEST(TensorParallel, IndivisibleDimensionsAreNamed) {
  ThreadGroup threads(2);
  ThreadCommunicator group(threads, 0);  // the checks come before any collective
  auto opt = family("opt");
  auto c = config("opt");
  c["hidden_size"] = 24;
  c["num_attention_heads"] = 3;
  auto message = error_of([&] { make_tensor_parallel_shard(*opt, *opt->build(c, {}), group); });
  EXPECT_NE(message.find("tensor parallelism over 2 ranks needs num_heads (3 attention heads) to be a multiple of 2"),
            std::string::npos)
      << message;

  auto llama = family("llama");
  c = config("llama");
  c["num_key_value_heads"] = 1;
  message = error_of([&] { make_tensor_parallel_shard(*llama, *llama->build(c, {}), group); });
  EXPECT_NE(message.find("needs num_kv_heads (1 key/value heads) to be a multiple of 2"), std::string::npos)
      << message;

  c = config("opt");
  c["ffn_dim"] = 37;
  message = error_of([&] { make_tensor_parallel_shard(*opt, *opt->build(c, {}), group); });
  EXPECT_NE(message.find("splits dim 0 of 'model.decoder.layers.0.fc1.weight' [37, 32]"), std::string::npos)
      << message;

  c = config("opt");
  c["vocab_size"] = 63;
  message = error_of([&] { make_tensor_parallel_shard(*opt, *opt->build(c, {}), group); });
  EXPECT_NE(message.find("splits dim 0 of 'lm_head.weight' [63, 32]"), std::string::npos) << message;
}

TEST(TensorParallel, StrategyPluginChecksItsLayout) {
  auto strategy = registry().create<Strategy>("tp", table(""));
  EXPECT_NE(strategy->describe().find("tensor parallel over 1 rank"), std::string::npos) << strategy->describe();
  EXPECT_EQ(strategy->tensor_parallel_size(), 1);
  auto lm = family("opt")->build(config("opt"), {});
  auto message = error_of([&] { strategy->make_engine(lm, lm, {}); });  // built by hand: no family to split by
  EXPECT_NE(message.find("needs the model's family"), std::string::npos) << message;
  lm->set_family(family("opt"));
  auto engine = strategy->make_engine(lm, lm, {});  // one rank: a shard of the whole model, trained
  EXPECT_NE(engine->describe().find("tensor parallel 1 x data parallel 1"), std::string::npos) << engine->describe();
  auto half = family("opt")->build(config("opt"), {});
  half->set_family(family("opt"));
  half->to(at::kHalf);
  message = error_of([&] { strategy->make_engine(half, half, {}); });
  EXPECT_NE(message.find("fp16's dynamic loss scale"), std::string::npos) << message;
  message = error_of([&] { registry().create<Strategy>("tp", table("tp_size = 2")); });
  EXPECT_NE(message.find("must divide the 1 ranks the launcher started"), std::string::npos) << message;
  // Validated under a launcher (before any process group exists): the launcher's world size is what counts.
  ::setenv("WORLD_SIZE", "4", 1);
  ::setenv("RANK", "0", 1);
  EXPECT_EQ(registry().create<Strategy>("tp", table("tp_size = 2"))->tensor_parallel_size(), 2);
  EXPECT_EQ(registry().create<Strategy>("tp", table(""))->tensor_parallel_size(), 4);
  message = error_of([&] { registry().create<Strategy>("tp", table("tp_size = 3")); });
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
  EXPECT_NE(message.find("must divide the 4 ranks the launcher started"), std::string::npos) << message;
}

}  // namespace
