// The run's communicator on c10d: TCPStore rendezvous, ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA.
//
// Gloo's headers: the torch wheel ships ProcessGroupGloo.hpp but not the gloo headers it includes, while
// libtorch_cpu exports the process group itself. Debian's libgloo-dev (tools/setup.sh) provides the declarations;
// nothing of libgloo is linked, and the only gloo type that crosses into LibTorch is an opaque
// shared_ptr<gloo::transport::Device>, so the older snapshot's class layouts never meet the wheel's code.
#define USE_C10D_GLOO 1
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef DSCHAT_WITH_CUDA
#define USE_C10D_NCCL 1
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <ATen/ops/scalar_tensor.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "dschat/sdk/distributed.h"

namespace dschat {

void PendingCollective::wait() {
  if (!wait_) return;
  auto wait = std::move(wait_);
  wait_ = nullptr;
  wait();
}

double Communicator::sum(double value) {
  at::Tensor t = at::scalar_tensor(value, at::kDouble).reshape({1});
  all_reduce(t);
  return t.item<double>();
}

double Communicator::max(double value) {
  at::Tensor t = at::scalar_tensor(value, at::kDouble).reshape({1});
  all_reduce_max(t);
  return t.item<double>();
}

namespace {

std::string rank_list(const std::vector<int>& ranks) { return fmt::format("[{}]", fmt::join(ranks, ", ")); }

// "rank 1/2", or for a sub-group "rank 1/2 of group [1, 3] (world rank 3)".
std::string where(const Communicator& comm);

void check_peer(const Communicator& comm, const char* what, const char* role, int peer, const at::Tensor& tensor,
                int tag) {
  auto fail = [&](const std::string& problem) {
    throw std::invalid_argument(fmt::format("{}: {} {}", where(comm), what, problem));
  };
  if (peer < 0 || peer >= comm.size())
    fail(fmt::format("{} rank {} is out of range: this communicator has ranks 0..{} (size {})", role, peer,
                     comm.size() - 1, comm.size()));
  if (peer == comm.rank())
    fail(fmt::format("{} rank {} is this rank: a rank cannot {} itself", role, peer,
                     std::string(what) == "send" ? "send to" : "receive from"));
  if (tag < 0) fail(fmt::format("tag {} is negative", tag));
  if (!tensor.defined()) fail("of an undefined tensor");
  if (!tensor.is_contiguous()) fail(fmt::format("of a non-contiguous tensor (sizes {})", c10::str(tensor.sizes())));
}

void check_group(const Communicator& comm, const std::vector<int>& ranks) {
  auto fail = [&](const std::string& problem) {
    throw std::invalid_argument(fmt::format("{}: new_group({}): {}", where(comm), rank_list(ranks), problem));
  };
  if (ranks.empty()) fail("a group needs at least one rank");
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] < 0 || ranks[i] >= comm.size())
      fail(fmt::format("rank {} is out of range: this communicator has ranks 0..{} (size {})", ranks[i],
                       comm.size() - 1, comm.size()));
    if (i > 0 && ranks[i] == ranks[i - 1]) fail(fmt::format("rank {} appears twice", ranks[i]));
    if (i > 0 && ranks[i] < ranks[i - 1])
      fail(fmt::format("the ranks must be sorted ascending, and {} comes after {}", ranks[i], ranks[i - 1]));
  }
}

}  // namespace

PendingCollective Communicator::send_async(const at::Tensor& tensor, int dst, int tag) {
  check_peer(*this, "send", "destination", dst, tensor, tag);
  return start_send(tensor, dst, tag);
}

PendingCollective Communicator::recv_async(at::Tensor& tensor, int src, int tag) {
  check_peer(*this, "recv", "source", src, tensor, tag);
  return start_recv(tensor, src, tag);
}

std::shared_ptr<Communicator> Communicator::new_group(const std::vector<int>& ranks) {
  check_group(*this, ranks);
  return make_group(ranks);
}

std::vector<int> Communicator::world_ranks() const {
  std::vector<int> ranks(size());
  for (int r = 0; r < size(); ++r) ranks[r] = r;
  return ranks;
}

PendingCollective Communicator::start_send(const at::Tensor&, int, int) {
  throw std::logic_error(fmt::format("send: the {} communicator has no point-to-point operations", backend()));
}
PendingCollective Communicator::start_recv(at::Tensor&, int, int) {
  throw std::logic_error(fmt::format("recv: the {} communicator has no point-to-point operations", backend()));
}
std::shared_ptr<Communicator> Communicator::make_group(const std::vector<int>&) {
  throw std::logic_error(fmt::format("new_group: the {} communicator has no sub-groups", backend()));
}

Mesh make_mesh(Communicator& parent, int dp, int tp) {
  if (dp < 1 || tp < 1 || dp * tp != parent.size())
    throw std::invalid_argument(fmt::format("{}: make_mesh(dp {}, tp {}): dp x tp must equal the {} ranks of the "
                                            "communicator",
                                            where(parent), dp, tp, parent.size()));
  Mesh mesh;
  // The same order on every rank: the TP groups, then the DP groups.
  for (int d = 0; d < dp; ++d) {
    std::vector<int> ranks;
    for (int t = 0; t < tp; ++t) ranks.push_back(d * tp + t);
    if (auto group = parent.new_group(ranks)) mesh.tp = std::move(group);
  }
  for (int t = 0; t < tp; ++t) {
    std::vector<int> ranks;
    for (int d = 0; d < dp; ++d) ranks.push_back(d * tp + t);
    if (auto group = parent.new_group(ranks)) mesh.dp = std::move(group);
  }
  return mesh;
}

namespace {

// One process: every collective is the identity.
class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "none"; }
  double timeout_s() const override { return 0.0; }
  PendingCollective all_reduce_async(at::Tensor&) override { return {}; }
  void all_reduce_max(at::Tensor&) override {}
  PendingCollective all_gather_async(at::Tensor& full, const at::Tensor& shard) override {
    if (!full.is_same(shard)) full.view({-1}).copy_(shard.view({-1}));
    return {};
  }
  PendingCollective reduce_scatter_async(at::Tensor& shard, const at::Tensor& full) override {
    if (!full.is_same(shard)) shard.view({-1}).copy_(full.view({-1}));
    return {};
  }
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}

 protected:
  // A size-1 group has no peer: send_async and recv_async refuse every rank before reaching here.
  std::shared_ptr<Communicator> make_group(const std::vector<int>&) override {
    return std::make_shared<LocalCommunicator>();
  }
};

// What a process group needs to start sub-groups of itself.
struct GroupFactory {
  std::string backend;                                            // "gloo" | "nccl"
  std::vector<std::shared_ptr<::gloo::transport::Device>> devices;  // gloo: shared by every group
  std::chrono::milliseconds timeout;
};

c10::intrusive_ptr<c10d::Backend> start_group(const GroupFactory& factory, const c10::intrusive_ptr<c10d::Store>& store,
                                              int rank, int size) {
  if (factory.backend == "gloo") {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create();
    gloo_options->timeout = factory.timeout;
    gloo_options->devices = factory.devices;
    return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, size, gloo_options);
  }
#ifdef DSCHAT_WITH_CUDA
  auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
  nccl_options->timeout = factory.timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, size, nccl_options);
#else
  throw std::invalid_argument("the NCCL backend needs a CUDA build of dschat (cmake -DDSCHAT_CUDA=ON)");
#endif
}

class ProcessGroupCommunicator : public Communicator {
 public:
  // `world_ranks`: the members' world ranks (empty: the world itself); `store`: this group's own prefix.
  ProcessGroupCommunicator(c10::intrusive_ptr<c10d::Backend> group, GroupFactory factory,
                           c10::intrusive_ptr<c10d::Store> store, int rank, int size, std::vector<int> world_ranks)
      : group_(std::move(group)),
        factory_(std::move(factory)),
        store_(std::move(store)),
        backend_(factory_.backend),
        rank_(rank),
        size_(size),
        timeout_(factory_.timeout),
        world_ranks_(std::move(world_ranks)) {
    where_ = world_ranks_.empty() ? fmt::format("rank {}/{}", rank_, size_)
                                  : fmt::format("rank {}/{} of group {} (world rank {})", rank_, size_,
                                                rank_list(world_ranks_), world_ranks_[rank_]);
  }

  const std::string& where() const { return where_; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return backend_; }
  std::vector<int> world_ranks() const override {
    return world_ranks_.empty() ? Communicator::world_ranks() : world_ranks_;
  }
  double timeout_s() const override { return static_cast<double>(timeout_.count()) / 1000.0; }

  PendingCollective all_reduce_async(at::Tensor& tensor) override {
    return run("all_reduce", tensor, [&] {
      std::vector<at::Tensor> tensors{tensor};
      c10d::AllreduceOptions options;
      options.reduceOp = c10d::ReduceOp::SUM;
      options.timeout = timeout_;
      return group_->allreduce(tensors, options);
    });
  }
  void all_reduce_max(at::Tensor& tensor) override {
    run("all_reduce(max)", tensor, [&] {
      std::vector<at::Tensor> tensors{tensor};
      c10d::AllreduceOptions options;
      options.reduceOp = c10d::ReduceOp::MAX;
      options.timeout = timeout_;
      return group_->allreduce(tensors, options);
    }).wait();
  }
  PendingCollective all_gather_async(at::Tensor& full, const at::Tensor& shard) override {
    TORCH_CHECK(full.numel() == shard.numel() * size_, "all_gather: full has ", full.numel(), " elements, expected ",
                size_, " x ", shard.numel());
    return run("all_gather", full, [&] {
      // Gloo wants each output chunk shaped like the input: both flat, so the contract is by element count.
      at::Tensor output = full.view({-1});
      at::Tensor input = shard.view({-1});
      c10d::AllgatherOptions options;
      options.timeout = timeout_;
      return group_->_allgather_base(output, input, options);
    });
  }
  PendingCollective reduce_scatter_async(at::Tensor& shard, const at::Tensor& full) override {
    TORCH_CHECK(full.numel() == shard.numel() * size_, "reduce_scatter: full has ", full.numel(),
                " elements, expected ", size_, " x ", shard.numel());
    return run("reduce_scatter", full, [&] {
      at::Tensor output = shard.view({-1});
      at::Tensor input = full.view({-1});
      c10d::ReduceScatterOptions options;
      options.reduceOp = c10d::ReduceOp::SUM;
      options.timeout = timeout_;
      return group_->_reduce_scatter_base(output, input, options);
    });
  }
  void broadcast(at::Tensor& tensor, int root) override {
    run("broadcast", tensor, [&] {
      std::vector<at::Tensor> tensors{tensor};
      c10d::BroadcastOptions options;
      options.rootRank = root;
      options.timeout = timeout_;
      return group_->broadcast(tensors, options);
    }).wait();
  }
  void barrier() override {
    at::Tensor none;
    run("barrier", none, [&] {
      c10d::BarrierOptions options;
      options.timeout = timeout_;
      return group_->barrier(options);
    }).wait();
  }

 protected:
  PendingCollective start_send(const at::Tensor& tensor, int dst, int tag) override {
    const std::string what = fmt::format("send to rank {}", dst);
    return run(what.c_str(), tensor, [&] {
      std::vector<at::Tensor> tensors{tensor};
      return group_->send(tensors, dst, tag);
    });
  }
  PendingCollective start_recv(at::Tensor& tensor, int src, int tag) override {
    const std::string what = fmt::format("recv from rank {}", src);
    return run(what.c_str(), tensor, [&] {
      std::vector<at::Tensor> tensors{tensor};
      return group_->recv(tensors, src, tag);
    });
  }

  // As torch.distributed.new_group: the n-th group made from this communicator rendezvous under "group/<n>" of
  // this communicator's store, so neither the world's keys nor another group's collide with it; non-members
  // only count it.
  std::shared_ptr<Communicator> make_group(const std::vector<int>& ranks) override {
    const int64_t index = groups_made_++;
    const auto at = std::find(ranks.begin(), ranks.end(), rank_);
    if (at == ranks.end()) return nullptr;
    const int group_rank = static_cast<int>(at - ranks.begin());
    const int group_size = static_cast<int>(ranks.size());
    const std::vector<int> mine = world_ranks();
    std::vector<int> members;
    for (int r : ranks) members.push_back(mine[r]);
    auto store = c10::make_intrusive<c10d::PrefixStore>(fmt::format("group/{}", index), store_);
    c10::intrusive_ptr<c10d::Backend> group;
    try {
      group = start_group(factory_, store, group_rank, group_size);
    } catch (const std::invalid_argument&) {
      throw;
    } catch (const std::exception& e) {
      std::string cause = e.what();
      throw DistributedError(fmt::format(
          "{}: starting the {} group {} (world ranks) failed within {:.0f} s: {}. Every rank of the communicator "
          "must call new_group with the same ranks, in the same order",
          where_, backend_, rank_list(members), timeout_s(), cause.substr(0, cause.find('\n'))));
    }
    return std::make_shared<ProcessGroupCommunicator>(std::move(group), factory_, std::move(store), group_rank,
                                                      group_size, std::move(members));
  }

 private:
  // Starts a collective; its failure (at start or on wait) becomes a DistributedError that says which rank, which
  // collective, and what most likely happened.
  template <typename Start>
  PendingCollective run(const char* what, const at::Tensor& tensor, Start&& start) {
    const std::string label = tensor.defined() ? fmt::format("{} of {} {} elements", what, tensor.numel(),
                                                             c10::toString(tensor.scalar_type()))
                                               : std::string(what);
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = start();
    } catch (const std::exception& e) {
      throw failure(label, e.what());
    }
    return PendingCollective([this, work, label] {
      try {
        if (!work->wait(timeout_)) throw std::runtime_error("timed out");
      } catch (const std::exception& e) {
        throw failure(label, e.what());
      }
    });
  }
  DistributedError failure(const std::string& label, const std::string& cause) const {
    std::string first_line = cause.substr(0, cause.find('\n'));
    return DistributedError(fmt::format(
        "{}: {} failed ({}): {}. Another rank has most likely died or stopped responding; every rank gives "
        "up within the timeout ({:.0f} s, [distributed] timeout_s)",
        where_, label, backend_, first_line, timeout_s()));
  }

  c10::intrusive_ptr<c10d::Backend> group_;
  GroupFactory factory_;
  c10::intrusive_ptr<c10d::Store> store_;
  std::string backend_;
  int rank_, size_;
  std::chrono::milliseconds timeout_;
  std::vector<int> world_ranks_;
  std::string where_;
  int64_t groups_made_ = 0;
};

std::string where(const Communicator& comm) {
  if (auto* group = dynamic_cast<const ProcessGroupCommunicator*>(&comm)) return group->where();
  return fmt::format("rank {}/{}", comm.rank(), comm.size());
}

std::mutex world_mutex;
std::unique_ptr<Communicator> world_communicator;
LaunchEnvironment world_environment;

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

std::string text(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }

// Every rank signs in with what its launcher told it and checks the ranks that signed in before it: one that
// disagrees (another world size, a rank already taken) posts the disagreement, so every rank stops now instead
// of waiting out the timeout for ranks that will never come. Replaces TCPStore's waitWorkers, which would wait
// for rank 0's idea of the world size.
void sign_in(c10d::Store& store, const LaunchEnvironment& env, bool serving, std::chrono::milliseconds timeout) {
  char host[256] = "?";
  ::gethostname(host, sizeof(host) - 1);
  const std::string me =
      fmt::format("{} rank {} of {} (pid {} on {})", env.launcher, env.rank, env.world_size, ::getpid(), host);
  const std::string where = fmt::format("rank {}/{}", env.rank, env.world_size);
  // The rank that serves the store stays until every rank that signed in has read the error (5 s at most):
  // leaving at once would close the store under those still polling.
  auto stop = [&](const std::string& problem) {
    store.add("join/stopped", 1);
    for (auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
         serving && store.add("join/stopped", 0) < store.add("join/count", 0) &&
         std::chrono::steady_clock::now() < until;)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return DistributedError(fmt::format("{}: {}", where, problem));
  };
  const int64_t index = store.add("join/count", 1);
  store.set(fmt::format("join/{}", index), fmt::format("{} {} {}", env.rank, env.world_size, me));
  for (int64_t i = 1; i < index; ++i) {
    std::istringstream record(text(store.get(fmt::format("join/{}", i))));
    int rank = -1, size = -1;
    std::string them;
    record >> rank >> size >> std::ws;
    std::getline(record, them);
    if (size == env.world_size && rank != env.rank) continue;
    const std::string problem = fmt::format(
        "the launcher started inconsistent ranks: {} and {} met at {}:{}; every rank needs the same world size "
        "and a rank of its own (or another run uses the same MASTER_ADDR:MASTER_PORT)",
        them, me, env.master_addr, env.master_port);
    store.set("join/error", problem);
    throw stop(problem);
  }
  store.add("join/checked", 1);
  for (const auto deadline = std::chrono::steady_clock::now() + timeout;;) {
    if (store.check({"join/error"})) throw stop(text(store.get("join/error")));
    const int64_t checked = store.add("join/checked", 0);
    if (checked >= env.world_size) return;
    if (std::chrono::steady_clock::now() > deadline)
      throw DistributedError(fmt::format("{}: {} of {} ranks signed in at {}:{} within {:.0f} s", where, checked,
                                         env.world_size, env.master_addr, env.master_port, timeout.count() / 1000.0));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

void init_world(const LaunchEnvironment& env, const DistributedOptions& options) {
  std::lock_guard<std::mutex> lock(world_mutex);
  TORCH_CHECK(!world_communicator || world_communicator->size() == 1, "init_world: the world is already started");
  world_environment = env;
  if (env.world_size == 1) {
    world_communicator = std::make_unique<LocalCommunicator>();
    return;
  }
  std::string backend = options.backend == "auto" ? (options.cuda ? "nccl" : "gloo") : options.backend;
  if (backend != "gloo" && backend != "nccl")
    throw std::invalid_argument("[distributed] backend = \"" + backend + "\": expected \"auto\", \"gloo\" or \"nccl\"");
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(options.timeout_s * 1000.0));

  c10::intrusive_ptr<c10d::Store> store;
  try {
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<uint16_t>(env.master_port);
    store_options.isServer = !env.agent_store && env.rank == 0;
    store_options.numWorkers = env.agent_store ? std::nullopt : std::optional<size_t>(env.world_size);
    store_options.waitWorkers = false;  // sign_in below waits, and notices ranks that disagree
    store_options.timeout = timeout;
    try {
      store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
    } catch (const std::exception&) {
      // Rank 0's port is taken: perhaps by another process that also says rank 0. Join its store as a client
      // (briefly), so sign_in can say so; anything else that holds the port fails with the bind error.
      if (!store_options.isServer) throw;
      const auto bind_error = std::current_exception();
      store_options.isServer = false;
      store_options.timeout = std::min(timeout, std::chrono::milliseconds(5000));
      try {
        store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
      } catch (const std::exception&) {
        std::rethrow_exception(bind_error);
      }
      store->setTimeout(timeout);
    }
    if (env.agent_store) store = c10::make_intrusive<c10d::PrefixStore>(env.store_prefix, store);
    store = c10::make_intrusive<c10d::PrefixStore>("dschat/world", store);
    sign_in(*store, env, store_options.isServer, timeout);
  } catch (const DistributedError&) {
    throw;
  } catch (const std::exception& e) {
    std::string cause = e.what();
    throw DistributedError(fmt::format(
        "rank {}/{}: rendezvous at {}:{} failed within {:.0f} s: {}", env.rank, env.world_size, env.master_addr,
        env.master_port, options.timeout_s, cause.substr(0, cause.find('\n'))));
  }

  GroupFactory factory{backend, {}, timeout};
  c10::intrusive_ptr<c10d::Backend> group;
  try {
    if (backend == "gloo") {
      // GLOO_SOCKET_IFNAME picks the interface (as in PyTorch); a loopback store means one machine.
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname)
        factory.devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      else if (is_loopback(env.master_addr))
        factory.devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      else
        factory.devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    } else {
#ifdef DSCHAT_WITH_CUDA
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(env.local_rank));
#endif
    }
    group = start_group(factory, store, env.rank, env.world_size);
  } catch (const std::invalid_argument&) {
    throw;
  } catch (const std::exception& e) {
    std::string cause = e.what();
    throw DistributedError(fmt::format("rank {}/{}: starting the {} process group failed within {:.0f} s: {}",
                                       env.rank, env.world_size, backend, options.timeout_s,
                                       cause.substr(0, cause.find('\n'))));
  }
  world_communicator = std::make_unique<ProcessGroupCommunicator>(std::move(group), std::move(factory), store, env.rank,
                                                                  env.world_size, std::vector<int>{});
}

Communicator& world() {
  std::lock_guard<std::mutex> lock(world_mutex);
  if (!world_communicator) world_communicator = std::make_unique<LocalCommunicator>();
  return *world_communicator;
}

const LaunchEnvironment& launch_environment() { return world_environment; }

namespace {
std::atomic<int> ranks_per_replica{1};
}

void set_tensor_parallel_size(int size) {
  if (size < 1 || world().size() % size != 0)
    throw std::invalid_argument(fmt::format("tensor-parallel size {} does not divide the {} ranks", size,
                                            world().size()));
  ranks_per_replica = size;
}

DataParallelPlacement data_parallel() {
  const int tp = ranks_per_replica;
  auto& comm = world();
  return {comm.rank() / tp, comm.size() / tp, tp};
}

}  // namespace dschat
