#pragma once
// The run's process group: every rank started by the user's launcher (torchrun --no-python, srun, mpirun) joins
// one c10d group, Gloo on CPU and NCCL on GPU, through a TCPStore rendezvous. The host starts it once, before
// the first stage; strategies and algorithms reach it with dschat::world().
//
//   auto& comm = dschat::world();             // size() == 1 without a launcher: every collective is a no-op
//   comm.all_reduce(grads);                   // sum over ranks, in place
//   double loss = comm.mean(local_loss);      // Gloo has no AVG: summed, divided here
//
// Sub-groups, for 2-D layouts (TP x DP) and pipelines: as torch.distributed.new_group, every rank of the parent
// calls new_group with the same list, in the same order as its other new_group calls; members get a communicator
// whose rank() and size() count inside the group, non-members get nullptr. make_mesh builds both groups of a
// dp x tp layout. Point-to-point send/recv (ranks of the communicator they are called on) block as c10d's do:
// send until the tensor is handed to the transport, recv until it has arrived.
//
//   auto mesh = dschat::make_mesh(comm, /*dp=*/2, /*tp=*/2);  // TP {0,1},{2,3}; DP {0,2},{1,3}
//   mesh.tp->all_reduce(partial);                             // inside this rank's TP group only
//   auto pipe = comm.new_group({0, 1});                       // nullptr on ranks 2 and 3
//   if (pipe && pipe->rank() == 0) pipe->send(activations, 1);
//
// A collective or send/recv that fails (a peer died: Gloo sees the connection close) or does not finish within
// the timeout throws DistributedError naming this rank (and its group), the operation and the timeout; the host
// then exits non-zero at once instead of waiting on the remaining ranks. A bad argument (a group list that is not
// sorted, unique and within the communicator; a peer that is this rank or out of range) throws
// std::invalid_argument before anything is sent.
//
// c10d's headers (and Gloo's) stay out of this file: plugins include it without them.
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dschat/sdk/export.h"

namespace dschat {

// Where this process sits, read from the launcher's environment variables.
struct DSCHAT_SDK_API LaunchEnvironment {
  std::string launcher = "none";  // "torchrun" | "slurm" | "mpirun" | "env" (RANK/WORLD_SIZE set by hand) | "none"
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // torchrun's agent already serves a TCPStore on MASTER_PORT (TORCHELASTIC_USE_AGENT_STORE=True): every rank
  // connects to it as a client, under a prefix per restart attempt, as torch.distributed does.
  bool agent_store = false;
  std::string store_prefix;
  std::string describe() const;  // "torchrun rank 1/2 (local 1), store 127.0.0.1:29500"
};

// Reads, in order of precedence: torchrun / plain env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
// Open MPI (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK), Slurm (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR defaults to the first host of SLURM_STEP_NODELIST / SLURM_NODELIST
// when that is a plain name or a simple "prefix[N-M,...]" range). A malformed value throws std::invalid_argument
// naming the variable. `getenv` is injectable for tests.
DSCHAT_SDK_API LaunchEnvironment detect_launch_environment(
    const std::function<const char*(const char*)>& getenv = nullptr);

struct DistributedOptions {
  std::string backend = "auto";  // "auto" (nccl when the strategy runs on CUDA, else gloo) | "gloo" | "nccl"
  bool cuda = false;             // the device the run trains on (picks the "auto" backend)
  double timeout_s = 300.0;      // rendezvous and every collective
};

class DSCHAT_SDK_API DistributedError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A collective started with *_async; wait() rethrows its failure as DistributedError. Waiting twice is harmless.
class DSCHAT_SDK_API PendingCollective {
 public:
  PendingCollective() = default;
  explicit PendingCollective(std::function<void()> wait) : wait_(std::move(wait)) {}
  void wait();
  bool pending() const { return static_cast<bool>(wait_); }

 private:
  std::function<void()> wait_;
};

class DSCHAT_SDK_API Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  bool is_main() const { return rank() == 0; }
  virtual std::string backend() const = 0;  // "gloo", "nccl", or "none" (size 1)
  virtual double timeout_s() const = 0;

  // All in place on contiguous tensors of this rank's device.
  virtual PendingCollective all_reduce_async(at::Tensor& tensor) = 0;  // sum
  void all_reduce(at::Tensor& tensor) { all_reduce_async(tensor).wait(); }
  virtual void all_reduce_max(at::Tensor& tensor) = 0;
  // full.numel() == size() * shard.numel(); rank r's shard lands at [r * n, (r + 1) * n).
  virtual PendingCollective all_gather_async(at::Tensor& full, const at::Tensor& shard) = 0;
  void all_gather(at::Tensor& full, const at::Tensor& shard) { all_gather_async(full, shard).wait(); }
  // shard = sum over ranks of full[rank * n, (rank + 1) * n); full.numel() == size() * shard.numel().
  virtual PendingCollective reduce_scatter_async(at::Tensor& shard, const at::Tensor& full) = 0;
  void reduce_scatter(at::Tensor& shard, const at::Tensor& full) { reduce_scatter_async(shard, full).wait(); }
  virtual void broadcast(at::Tensor& tensor, int root) = 0;
  virtual void barrier() = 0;

  // Point-to-point between two ranks of this communicator, on a contiguous tensor; the receiver's tensor has the
  // sender's dtype and element count. `tag` (>= 0) tells apart messages between the same pair (Gloo; NCCL
  // ignores it). Sending to oneself or to a rank outside [0, size()) throws std::invalid_argument.
  PendingCollective send_async(const at::Tensor& tensor, int dst, int tag = 0);
  void send(const at::Tensor& tensor, int dst, int tag = 0) { send_async(tensor, dst, tag).wait(); }
  PendingCollective recv_async(at::Tensor& tensor, int src, int tag = 0);
  void recv(at::Tensor& tensor, int src, int tag = 0) { recv_async(tensor, src, tag).wait(); }

  // A sub-communicator over `ranks` (ranks of this communicator: world ranks when called on world()), sorted,
  // unique and non-empty, else std::invalid_argument. Collective: every rank of this communicator calls it with
  // the same list, in the same order; the members build the group (same backend and timeout), the others get
  // nullptr. On a size-1 communicator new_group({0}) is another size-1 one.
  std::shared_ptr<Communicator> new_group(const std::vector<int>& ranks);
  // The world ranks of the members, in group order (0 .. size() - 1 for the world).
  virtual std::vector<int> world_ranks() const;

  // Scalars, for metrics and decisions every rank must take alike.
  double sum(double value);
  double mean(double value) { return sum(value) / size(); }
  double max(double value);

 protected:
  // Called with checked arguments. The defaults throw std::logic_error: this communicator has no point-to-point
  // or sub-groups.
  virtual PendingCollective start_send(const at::Tensor& tensor, int dst, int tag);
  virtual PendingCollective start_recv(at::Tensor& tensor, int src, int tag);
  // Called on every rank of this communicator; returns nullptr where this rank is not in `ranks`.
  virtual std::shared_ptr<Communicator> make_group(const std::vector<int>& ranks);
};

// A dp x tp layout of `parent`'s ranks, tensor-parallel ranks adjacent (Megatron's order): rank = d * tp + t, so
// the TP groups are {d * tp .. d * tp + tp - 1} and the DP groups {t, tp + t, 2 tp + t, ...}. Collective over
// `parent` (it creates every group, in the same order on every rank); dp * tp must equal parent.size().
struct Mesh {
  std::shared_ptr<Communicator> dp;  // this rank's data-parallel group: size dp, rank() == d
  std::shared_ptr<Communicator> tp;  // this rank's tensor-parallel group: size tp, rank() == t
};
DSCHAT_SDK_API Mesh make_mesh(Communicator& parent, int dp, int tp);

// Joins the process group described by `env` (world_size 1: a local no-op communicator). Throws
// DistributedError when the rendezvous does not complete within the timeout (naming the store address).
DSCHAT_SDK_API void init_world(const LaunchEnvironment& env, const DistributedOptions& options);
// The run's communicator; a size-1 one until init_world.
DSCHAT_SDK_API Communicator& world();
DSCHAT_SDK_API const LaunchEnvironment& launch_environment();

// This rank's place among the data-parallel replicas of the running stage: each rank is a replica of its own
// (world rank and size) unless the stage's strategy splits every model over groups of adjacent ranks
// (Strategy::tensor_parallel_size(): the `tp` strategy), whose members read the same batches. Stages shard
// their data by it. The host sets the size before each stage; world().size() must be a multiple of it.
struct DataParallelPlacement {
  int rank = 0;
  int size = 1;
  int tensor_parallel_size = 1;  // ranks per replica
};
DSCHAT_SDK_API DataParallelPlacement data_parallel();
DSCHAT_SDK_API void set_tensor_parallel_size(int ranks_per_replica);

}  // namespace dschat
