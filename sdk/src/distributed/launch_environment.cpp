// Reading the launcher's environment: torchrun (and plain RANK/WORLD_SIZE), Open MPI's mpirun, Slurm's srun.
#include <algorithm>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

#include "dschat/sdk/distributed.h"

namespace dschat {

namespace {

using Getenv = std::function<const char*(const char*)>;

std::optional<std::string> read(const Getenv& getenv, const char* name) {
  const char* value = getenv(name);
  if (!value || !*value) return std::nullopt;
  return std::string(value);
}

std::optional<int> read_int(const Getenv& getenv, const char* name, int min_value) {
  auto text = read(getenv, name);
  if (!text) return std::nullopt;
  size_t used = 0;
  long value = 0;
  try {
    value = std::stol(*text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text->size() || value < min_value || value > 1 << 24)
    throw std::invalid_argument(fmt::format("environment variable {}=\"{}\": expected an integer >= {}", name, *text,
                                            min_value));
  return static_cast<int>(value);
}

// The first host of a Slurm node list: "node7", "gpu[03-05,09]" -> "gpu03", "a[1-2],b3" -> "a1".
std::string first_slurm_host(const std::string& list) {
  const size_t bracket = list.find('[');
  const size_t comma = list.find(',');
  if (bracket == std::string::npos || (comma != std::string::npos && comma < bracket))
    return list.substr(0, comma);
  std::string prefix = list.substr(0, bracket);
  size_t end = list.find_first_of("-,]", bracket + 1);
  if (end == std::string::npos) throw std::invalid_argument("cannot read the Slurm node list \"" + list + "\"");
  return prefix + list.substr(bracket + 1, end - bracket - 1);
}

}  // namespace

std::string LaunchEnvironment::describe() const {
  if (world_size == 1 && launcher == "none") return "one process (no launcher)";
  return fmt::format("{} rank {}/{} (local {}), store {}:{}{}", launcher, rank, world_size, local_rank, master_addr,
                     master_port, agent_store ? " (torchrun's agent store)" : "");
}

LaunchEnvironment detect_launch_environment(const Getenv& getenv_in) {
  Getenv getenv = getenv_in ? getenv_in : Getenv([](const char* name) { return std::getenv(name); });
  LaunchEnvironment env;
  if (auto size = read_int(getenv, "WORLD_SIZE", 1)) {  // torchrun, or set by hand
    env.launcher = read(getenv, "TORCHELASTIC_RUN_ID") ? "torchrun" : "env";
    env.world_size = *size;
    env.rank = read_int(getenv, "RANK", 0).value_or(0);
    env.local_rank = read_int(getenv, "LOCAL_RANK", 0).value_or(env.rank);
    env.local_world_size = read_int(getenv, "LOCAL_WORLD_SIZE", 1).value_or(env.world_size);
    auto use_agent = read(getenv, "TORCHELASTIC_USE_AGENT_STORE");
    env.agent_store = use_agent && (*use_agent == "True" || *use_agent == "true" || *use_agent == "1");
    env.store_prefix = fmt::format("/dschat/attempt_{}", read_int(getenv, "TORCHELASTIC_RESTART_COUNT", 0).value_or(0));
  } else if (auto size = read_int(getenv, "OMPI_COMM_WORLD_SIZE", 1)) {
    env.launcher = "mpirun";
    env.world_size = *size;
    env.rank = read_int(getenv, "OMPI_COMM_WORLD_RANK", 0).value_or(0);
    env.local_rank = read_int(getenv, "OMPI_COMM_WORLD_LOCAL_RANK", 0).value_or(env.rank);
    env.local_world_size = read_int(getenv, "OMPI_COMM_WORLD_LOCAL_SIZE", 1).value_or(env.world_size);
    // One port per mpirun, as per Slurm job below, so two jobs sharing a node do not collide: Open MPI 4 gives
    // each job's ranks its 32-bit job id.
    if (auto job = read(getenv, "OMPI_MCA_ess_base_jobid")) {
      char* end = nullptr;
      const unsigned long long id = std::strtoull(job->c_str(), &end, 10);
      if (*end == '\0') env.master_port = 20000 + static_cast<int>(id % 10000);
    }
  } else if (auto size = read_int(getenv, "SLURM_NTASKS", 1); size && read(getenv, "SLURM_PROCID")) {
    env.launcher = "slurm";
    env.world_size = *size;
    env.rank = read_int(getenv, "SLURM_PROCID", 0).value_or(0);
    env.local_rank = read_int(getenv, "SLURM_LOCALID", 0).value_or(0);
    // SLURM_NTASKS_PER_NODE exists only when the job asked --ntasks-per-node; else the local size stays 1.
    env.local_world_size = 1;
    if (auto per_node = read(getenv, "SLURM_NTASKS_PER_NODE"))
      env.local_world_size = std::max(1, std::atoi(per_node->c_str()));
    auto nodes = read(getenv, "SLURM_STEP_NODELIST");
    if (!nodes) nodes = read(getenv, "SLURM_JOB_NODELIST");
    if (nodes) env.master_addr = first_slurm_host(*nodes);
    // One port per job, so two jobs sharing a node do not collide.
    if (auto job = read_int(getenv, "SLURM_JOB_ID", 0)) env.master_port = 20000 + *job % 10000;
  } else {
    return env;  // no launcher: one process
  }
  if (auto addr = read(getenv, "MASTER_ADDR")) env.master_addr = *addr;
  if (auto port = read_int(getenv, "MASTER_PORT", 1)) env.master_port = *port;
  if (env.master_port > 65535)
    throw std::invalid_argument(fmt::format("MASTER_PORT={} is not a TCP port", env.master_port));
  if (env.rank >= env.world_size)
    throw std::invalid_argument(fmt::format("{} says rank {} of a world of {}: the rank must be below the size",
                                            env.launcher, env.rank, env.world_size));
  return env;
}

}  // namespace dschat
