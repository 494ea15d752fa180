#include "dschat/sdk/tensor_parallel.h"

#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/model.h"
#include "dschat/sdk/nn/attention.h"
#include "dschat/sdk/nn/init.h"
#include "dschat/sdk/nn/linear.h"

namespace dschat {

namespace {

using SplitMap = std::unordered_map<std::string, TensorSplit>;

std::string join(const std::string& path, const std::string& leaf) { return path.empty() ? leaf : path + "." + leaf; }

TensorSplit split_of(const SplitMap& splits, const std::string& name) {
  auto it = splits.find(name);
  return it == splits.end() ? TensorSplit::replicated : it->second;
}

int64_t split_dim(TensorSplit split) { return split == TensorSplit::rows ? 0 : 1; }

// Row-parallel: the partial products of every rank summed in place. Gloo's and NCCL's all-reduce give every rank
// the same bits, which keeps the ranks' decoding in lockstep.
std::function<at::Tensor(at::Tensor)> all_reduce_hook(Communicator* group) {
  return [group](at::Tensor partial) {
    TORCH_CHECK(!partial.requires_grad(), "tensor-parallel shards are inference-only (generation): their "
                                          "collectives are not differentiable");
    partial = partial.contiguous();
    group->all_reduce(partial);
    return partial;
  };
}

// [..., V / n] on each rank -> [..., V], rank r's slice at [r V / n, (r + 1) V / n).
at::Tensor gather_last_dim(const at::Tensor& local, Communicator& group);

// Vocab-parallel head.
std::function<at::Tensor(at::Tensor)> all_gather_hook(Communicator* group) {
  return [group](at::Tensor local) {
    TORCH_CHECK(!local.requires_grad(), "tensor-parallel shards are inference-only (generation): their "
                                        "collectives are not differentiable");
    return gather_last_dim(local, *group);
  };
}

// ---- the differentiable collectives of a trainable shard (Megatron's f and g, and the head's gather) --------
// The group travels as an integer (a Function's non-tensor arguments must be IValue-storable); it outlives
// the shard, which outlives its graphs.
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Communicator* group_of(AutogradContext* ctx) {
  return reinterpret_cast<Communicator*>(ctx->saved_data["group"].toInt());
}

// f: the replicated input of a column-parallel layer; each rank's gradient covers its slice only.
struct EnterGroup : torch::autograd::Function<EnterGroup> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t group) {
    ctx->saved_data["group"] = group;
    return x.clone();  // a Function must not hand its input back as its output
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor g = grads[0].contiguous().clone();
    group_of(ctx)->all_reduce(g);
    return {g, at::Tensor()};
  }
};

// g: the row-parallel layer's partial products summed; the sum's gradient is every rank's own.
struct ReduceFromGroup : torch::autograd::Function<ReduceFromGroup> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& partial, int64_t group) {
    ctx->saved_data["group"] = group;
    at::Tensor sum = partial.contiguous().clone();
    reinterpret_cast<Communicator*>(group)->all_reduce(sum);
    return sum;
  }
  static variable_list backward(AutogradContext*, variable_list grads) { return {grads[0], at::Tensor()}; }
};

// The vocab-parallel head's logits gathered; every rank computes the same loss on them, so its slice of their
// gradient is its own.
struct GatherFromGroup : torch::autograd::Function<GatherFromGroup> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& local, int64_t group) {
    ctx->saved_data["group"] = group;
    ctx->saved_data["local"] = local.size(-1);
    return gather_last_dim(local, *reinterpret_cast<Communicator*>(group));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t local = ctx->saved_data["local"].toInt();
    return {grads[0].narrow(-1, group_of(ctx)->rank() * local, local).contiguous(), at::Tensor()};
  }
};

int64_t as_int(Communicator* group) { return reinterpret_cast<int64_t>(group); }

at::Tensor gather_last_dim(const at::Tensor& input, Communicator& group) {
  at::Tensor local = input.contiguous();
  const int64_t n = group.size();
  auto stacked_sizes = local.sizes().vec();
  stacked_sizes.insert(stacked_sizes.begin(), n);
  // Flat on both sides: the contract is by element count, and c10d's Gloo allgather also wants the output's
  // chunks shaped like the input.
  auto flat = local.view({-1});
  auto stacked = at::empty({n * flat.numel()}, local.options());
  group.all_gather(stacked, flat);
  auto sizes = local.sizes().vec();
  sizes.back() *= n;
  return stacked.view(stacked_sizes).movedim(0, -2).reshape(sizes);  // [n, ..., V / n] -> [..., V]
}

std::function<at::Tensor(at::Tensor)> enter_hook(Communicator* group) {
  return [group](at::Tensor x) { return EnterGroup::apply(x, as_int(group)); };
}
std::function<at::Tensor(at::Tensor)> reduce_hook(Communicator* group) {
  return [group](at::Tensor partial) { return ReduceFromGroup::apply(partial, as_int(group)); };
}
std::function<at::Tensor(at::Tensor)> gather_hook(Communicator* group) {
  return [group](at::Tensor local) { return GatherFromGroup::apply(local, as_int(group)); };
}

// Ties the spec to the layers: checks that the splits describe Megatron's layout (so that the hooks below are
// the right ones), then slices the layers' bookkeeping and installs the collectives.
void restructure(CausalLM& shard, const SplitMap& splits, Communicator& group, bool trainable) {
  const int64_t rank = group.rank(), size = group.size();
  std::unordered_set<const torch::nn::Module*> in_blocks;
  for (size_t i = 0; i < shard.num_blocks(); ++i) {
    for (const auto& module : shard.block_ptr(i)->modules()) in_blocks.insert(module.get());
  }
  std::unordered_set<std::string> handled;
  for (const auto& item : shard.named_modules()) {
    const std::string& path = item.key();
    if (auto* attention = dynamic_cast<AttentionImpl*>(item.value().get())) {
      const auto& o = attention->options();
      std::vector<std::string> projections =
          o.fused_qkv ? std::vector<std::string>{o.qkv_name} : std::vector<std::string>{o.q_name, o.k_name, o.v_name};
      const auto q_split = split_of(splits, join(join(path, projections.front()), "weight"));
      for (const auto& name : projections) {
        TORCH_CHECK(split_of(splits, join(join(path, name), "weight")) == q_split, "tensor_parallel_spec splits the "
                    "projections of '", path, "' differently; q, k and v must all split by rows (or none)");
      }
      const auto out_split = split_of(splits, join(join(path, o.out_name), "weight"));
      if (q_split == TensorSplit::replicated) {
        TORCH_CHECK(out_split == TensorSplit::replicated, "tensor_parallel_spec splits '", join(path, o.out_name),
                    "' but not the q/k/v projections of '", path, "'");
        continue;
      }
      TORCH_CHECK(q_split == TensorSplit::rows && out_split == TensorSplit::columns, "tensor_parallel_spec: '", path,
                  "' needs its q/k/v projections split by rows and '", o.out_name, "' by columns (got ",
                  to_string(q_split), " and ", to_string(out_split), ")");
      attention->shard_heads(rank, size);
      continue;
    }
    auto* linear = dynamic_cast<LoraLinearImpl*>(item.value().get());
    if (linear == nullptr) continue;
    const auto weight_name = join(path, "weight"), bias_name = join(path, "bias");
    const auto split = split_of(splits, weight_name);
    handled.insert(weight_name);
    handled.insert(bias_name);
    const auto bias_split = split_of(splits, bias_name);
    if (split == TensorSplit::rows) {
      TORCH_CHECK(!linear->bias.defined() || bias_split == TensorSplit::rows, "tensor_parallel_spec splits '",
                  weight_name, "' by rows, so its bias must split by rows too (got ", to_string(bias_split), ")");
      linear->out_features /= size;
      // Column-parallel layers inside a block feed the local heads / feed-forward slice as they are; a split
      // layer outside the blocks is the vocab-parallel head, whose logits every rank needs whole.
      if (in_blocks.count(linear) == 0)
        linear->gather_output = trainable ? gather_hook(&group) : all_gather_hook(&group);
      if (trainable) linear->enter_parallel = enter_hook(&group);
    } else if (split == TensorSplit::columns) {
      TORCH_CHECK(!linear->bias.defined() || bias_split == TensorSplit::replicated, "tensor_parallel_spec splits '",
                  weight_name, "' by columns, so its bias must be replicated (got ", to_string(bias_split), ")");
      linear->in_features /= size;
      linear->reduce_partial = trainable ? reduce_hook(&group) : all_reduce_hook(&group);
    } else {
      TORCH_CHECK(bias_split == TensorSplit::replicated, "tensor_parallel_spec splits '", bias_name,
                  "' but not its weight");
    }
  }
  for (const auto& item : shard.named_parameters()) {
    TORCH_CHECK(handled.count(item.key()) != 0 || split_of(splits, item.key()) == TensorSplit::replicated,
                "tensor_parallel_spec splits '", item.key(), "', which is not a linear layer's parameter (only "
                "linear layers are split)");
  }
}

void copy_slices(CausalLM& shard, const ModelFamily& family, CausalLM& full, bool first);

bool is_adapter(const std::string& name) {  // the shard carries none: they are folded into the slices
  return name.ends_with(".lora_right_weight") || name.ends_with(".lora_left_weight");
}

}  // namespace

void check_tensor_parallel_layout(const ModelFamily& family, const CausalLM& full, int64_t size,
                                  const TensorParallelShardOptions& options) {
  TORCH_CHECK(full.tensor_parallel().size == 1, "make_tensor_parallel_shard: the model is already a shard (rank ",
              full.tensor_parallel().rank, " of ", full.tensor_parallel().size, ")");
  TORCH_CHECK(full.model_type() == family.model_type(), "make_tensor_parallel_shard: a '", full.model_type(),
              "' model with the '", family.model_type(), "' family");
  const auto& dims = full.dims();
  TORCH_CHECK(dims.num_heads % size == 0, "tensor parallelism over ", size, " ranks needs num_heads (",
              dims.num_heads, " attention heads) to be a multiple of ", size);
  TORCH_CHECK(dims.num_kv_heads % size == 0, "tensor parallelism over ", size, " ranks needs num_kv_heads (",
              dims.num_kv_heads, " key/value heads) to be a multiple of ", size);
  const auto spec = family.tensor_parallel_spec(full);
  const auto full_params = full.named_parameters();
  if (options.trainable) {
    for (const auto& item : full_params) {
      TORCH_CHECK(!item.key().ends_with(".lora_right_weight"), "tensor-parallel training does not train LoRA "
                  "adapters ('", item.key(), "'): set lora_dim = 0, or train with a data-parallel strategy");
    }
  }
  for (const auto& [name, split] : spec) {
    if (split == TensorSplit::replicated || is_adapter(name)) continue;
    const auto& tensor = full_params[name];
    const int64_t dim = split_dim(split);
    TORCH_CHECK(tensor.dim() > dim && tensor.size(dim) % size == 0, "tensor parallelism over ", size,
                " ranks splits dim ", dim, " of '", name, "' ", tensor.sizes(), " (its ",
                dim == 0 ? "output" : "input", " features: the feed-forward width for fc1/up/down, vocab_size for "
                "lm_head), which is not a multiple of ", size);
  }
}

std::shared_ptr<CausalLM> make_tensor_parallel_shard(const ModelFamily& family, CausalLM& full,
                                                     Communicator& group, const TensorParallelShardOptions& options) {
  const int64_t size = group.size();
  check_tensor_parallel_layout(family, full, size, options);
  const auto spec = family.tensor_parallel_spec(full);
  const SplitMap splits(spec.begin(), spec.end());
  const auto full_params = full.named_parameters();

  // A fresh model of the family, weights left unset (every one is overwritten by its slice below), on the CPU in
  // fp32: the slices bring full's device and dtype with them.
  std::shared_ptr<CausalLM> shard;
  {
    SkipWeightInit skip;
    shard = family.build(full.hf_config(), ModelOptions{});
  }
  restructure(*shard, splits, group, options.trainable);
  shard->set_tensor_parallel({group.rank(), group.size()});
  for (auto& item : shard->named_parameters())
    item.value().set_requires_grad(options.trainable && full_params[item.key()].requires_grad());
  copy_slices(*shard, family, full, /*first=*/true);
  shard->train(options.trainable && full.is_training());
  return shard;
}

namespace {

void copy_slices(CausalLM& shard, const ModelFamily& family, CausalLM& full, bool first) {
  const auto placement = shard.tensor_parallel();
  at::NoGradGuard no_grad;
  const auto spec = family.tensor_parallel_spec(full);
  const SplitMap splits(spec.begin(), spec.end());
  const auto full_params = full.named_parameters();
  // Unfused adapters are folded in here; a fused one is already in its weight.
  std::unordered_map<std::string, at::Tensor> merged;
  for (const auto& item : full.named_modules()) {
    auto* linear = dynamic_cast<LoraLinearImpl*>(item.value().get());
    if (linear != nullptr && linear->has_lora() && !linear->fused()) {
      merged.emplace(join(item.key(), "weight"), linear->merged_weight());
    }
  }
  for (auto& item : shard.named_parameters()) {
    const std::string& name = item.key();
    const at::Tensor* found = full_params.find(name);
    TORCH_CHECK(found != nullptr, "refresh_tensor_parallel_shard: the full model has no parameter '", name, "'");
    auto it = merged.find(name);
    at::Tensor source = it != merged.end() ? it->second : *found;
    const auto split = split_of(splits, name);
    at::Tensor& target = item.value();
    auto expected = target.sizes().vec();  // before the first fill: the whole model's shape
    if (split != TensorSplit::replicated) {
      const int64_t dim = split_dim(split), part = source.size(dim) / placement.size;
      source = source.narrow(dim, placement.rank * part, part);
      if (first) expected[dim] /= placement.size;
    }
    TORCH_CHECK(source.sizes() == at::IntArrayRef(expected) &&
                    (first || (target.scalar_type() == source.scalar_type() && target.device() == source.device())),
                "refresh_tensor_parallel_shard: '", name, "' of the full model gives a ", source.scalar_type(), " ",
                source.sizes(), " slice on ", source.device(), ", the shard expects ", target.scalar_type(), " ",
                at::IntArrayRef(expected), " on ", target.device(), " (refresh from the model the shard was made from)");
    if (first) {  // replaces the placeholder (shape, dtype and device) under every handle to it
      target.set_data(source.clone(at::MemoryFormat::Contiguous));
      continue;
    }
    target.copy_(source);
  }
}

}  // namespace

void refresh_tensor_parallel_shard(CausalLM& shard, const ModelFamily& family, CausalLM& full) {
  copy_slices(shard, family, full, /*first=*/false);
}

void gather_tensor_parallel_shard(CausalLM& shard, const ModelFamily& family, CausalLM& full, Communicator& group) {
  TORCH_CHECK(shard.tensor_parallel().size == group.size() && shard.tensor_parallel().rank == group.rank(),
              "gather_tensor_parallel_shard: the shard is rank ", shard.tensor_parallel().rank, " of ",
              shard.tensor_parallel().size, ", the group's rank ", group.rank(), " of ", group.size());
  at::NoGradGuard no_grad;
  const auto spec = family.tensor_parallel_spec(full);
  const SplitMap splits(spec.begin(), spec.end());
  auto full_params = full.named_parameters();
  for (const auto& item : shard.named_parameters()) {
    at::Tensor* target = full_params.find(item.key());
    TORCH_CHECK(target != nullptr, "gather_tensor_parallel_shard: the full model has no parameter '", item.key(), "'");
    const auto split = split_of(splits, item.key());
    at::Tensor whole = item.value().detach();
    if (split == TensorSplit::rows) {  // [n, rows / n, ...] stacked is the rows in order
      at::Tensor stacked = at::empty({group.size() * whole.numel()}, whole.options());
      group.all_gather(stacked, whole.contiguous().view({-1}));
      auto sizes = whole.sizes().vec();
      sizes[0] *= group.size();
      whole = stacked.view(sizes);
    } else if (split == TensorSplit::columns) {
      whole = gather_last_dim(whole, group);
    }
    TORCH_CHECK(whole.sizes() == target->sizes(), "gather_tensor_parallel_shard: '", item.key(), "' gathers to ",
                whole.sizes(), ", the full model has ", target->sizes());
    target->copy_(whole);
  }
}

}  // namespace dschat
