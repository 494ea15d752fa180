#include "dschat/sdk/frozen_model.h"

#include <memory>
#include <unordered_set>
#include <vector>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <fmt/format.h>

#include "dschat/sdk/distributed.h"
#include "dschat/sdk/model.h"

namespace dschat {

namespace {

// One block's weights as one flat buffer: its parameters are views into the whole buffer while the block runs
// and empty otherwise.
struct BlockStore {
  std::vector<at::Tensor> params;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<int64_t> offsets, numels;  // each parameter's place in the flat buffer
  int64_t padded = 0;  // the flat length, a multiple of the shard count
  at::Tensor kept;     // this rank's slice (sharded) or the whole block (offloaded), where it is kept
};

void release(BlockStore& store, at::Device device) {
  for (auto& p : store.params) p.set_data(at::empty({0}, p.options().device(device)));
}

}  // namespace

std::string place_frozen_blocks(CausalLM& model, at::Device device, const FrozenPlacement& placement,
                                Communicator* shard_over) {
  at::NoGradGuard no_grad;
  const bool shard = shard_over != nullptr && shard_over->size() > 1;
  const bool offload = placement.offload && !device.is_cpu();
  if (!shard && !offload) {
    model.to(device);
    return "whole on " + device.str();
  }
  std::unordered_set<const c10::TensorImpl*> in_blocks;
  for (size_t i = 0; i < model.num_blocks(); ++i)
    for (const auto& p : model.block_ptr(i)->parameters()) in_blocks.insert(p.unsafeGetTensorImpl());
  for (auto& p : model.parameters())
    if (in_blocks.count(p.unsafeGetTensorImpl()) == 0) p.set_data(p.data().to(device));
  for (auto& b : model.buffers()) b.set_data(b.data().to(device));

  const int64_t n = shard ? shard_over->size() : 1, rank = shard ? shard_over->rank() : 0;
  auto stores = std::make_shared<std::vector<BlockStore>>(model.num_blocks());
  for (size_t i = 0; i < model.num_blocks(); ++i) {
    BlockStore& store = (*stores)[i];
    std::vector<at::Tensor> flat;
    int64_t numel = 0;
    for (auto& p : model.block_ptr(i)->parameters()) {
      TORCH_CHECK(flat.empty() || p.scalar_type() == flat.front().scalar_type(), "place_frozen_blocks: block ", i,
                  " mixes ", flat.front().scalar_type(), " and ", p.scalar_type(), " weights");
      store.params.push_back(p);
      store.shapes.push_back(p.sizes().vec());
      store.offsets.push_back(numel);
      store.numels.push_back(p.numel());
      numel += p.numel();
      flat.push_back(p.detach().reshape({-1}).to(at::kCPU));
    }
    if (flat.empty()) continue;
    store.padded = (numel + n - 1) / n * n;
    if (store.padded > numel) flat.push_back(at::zeros({store.padded - numel}, flat.front().options()));
    at::Tensor whole = at::cat(flat);
    const int64_t part = store.padded / n;
    store.kept = whole.narrow(0, rank * part, part).clone().to(offload ? at::Device(at::kCPU) : device);
    release(store, device);
  }

  model.set_block_runner([stores, shard_over, shard, device](size_t i, DecoderBlock& block, const at::Tensor& hidden,
                                                             const AttentionInputs& inputs, LayerKv* kv) {
    BlockStore& store = (*stores)[i];
    if (store.params.empty()) return block.forward(hidden, inputs, kv);
    at::NoGradGuard no_grad;  // frozen: nothing here is differentiated
    at::Tensor local = store.kept.to(device);  // offloaded: host -> device
    at::Tensor whole = local;
    if (shard) {
      whole = at::empty({store.padded}, local.options());
      shard_over->all_gather(whole, local);
    }
    for (size_t k = 0; k < store.params.size(); ++k)
      store.params[k].set_data(whole.narrow(0, store.offsets[k], store.numels[k]).view(store.shapes[k]));
    struct Release {
      BlockStore& store;
      at::Device device;
      ~Release() { release(store, device); }
    } after{store, device};
    return block.forward(hidden, inputs, kv);
  });
  return fmt::format("blocks {}{}", shard ? fmt::format("sharded over {} ranks", n) : std::string("whole"),
                     offload ? ", in host memory" : "");
}

}  // namespace dschat
