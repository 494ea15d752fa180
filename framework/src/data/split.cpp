// DeepSpeed-Chat's split (get_raw_dataset_split_index) and permutation (numpy RandomState.shuffle), reproduced
// exactly so that the same seed and split give the same examples per step as DeepSpeed-Chat would.
#include <cfenv>
#include <cmath>
#include <fstream>
#include <numeric>
#include <random>
#include <stdexcept>

#include <fmt/format.h>

#include "dschat/framework/data.h"

namespace dschat {

namespace {

// numpy's legacy random_interval: a uniform integer in [0, max] by masked rejection sampling.
uint64_t random_interval(std::mt19937& gen, uint64_t max) {
  if (max == 0) return 0;
  uint64_t mask = max;
  for (int shift : {1, 2, 4, 8, 16, 32}) mask |= mask >> shift;
  uint64_t value;
  if (max <= 0xffffffffULL) {
    while ((value = (static_cast<uint64_t>(gen()) & mask)) > max) {
    }
  } else {
    auto next64 = [&] {
      uint64_t hi = gen();
      return (hi << 32) | static_cast<uint64_t>(gen());
    };
    while ((value = (next64() & mask)) > max) {
    }
  }
  return value;
}

}  // namespace

std::vector<int64_t> numpy_permutation(uint64_t seed, int64_t n) {
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), 0);
  // RandomState(seed) seeds MT19937 with init_genrand(seed), as std::mt19937(seed) does; numpy accepts 32 bits.
  std::mt19937 gen(static_cast<uint32_t>(seed & 0xffffffffULL));
  for (int64_t i = n - 1; i >= 1; --i) {
    auto j = static_cast<int64_t>(random_interval(gen, static_cast<uint64_t>(i)));
    std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(j)]);
  }
  return perm;
}

std::vector<int64_t> split_boundaries(const std::vector<double>& shares, int64_t n) {
  double sum = 0;
  for (double s : shares) {
    if (!(s >= 0)) throw std::invalid_argument("split shares must be >= 0");
    sum += s;
  }
  if (sum <= 0) throw std::invalid_argument("split shares must not all be 0");
  std::vector<int64_t> bounds{0};
  int saved = std::fegetround();
  std::fesetround(FE_TONEAREST);  // Python's round(): half to even
  for (double s : shares)
    bounds.push_back(bounds.back() + static_cast<int64_t>(std::nearbyint(s / sum * static_cast<double>(n))));
  std::fesetround(saved);
  int64_t diff = bounds.back() - n;
  for (size_t i = 1; i < bounds.size(); ++i) bounds[i] -= diff;
  return bounds;
}

std::vector<int64_t> split_indices(uint64_t seed, const std::vector<double>& shares, int64_t n, size_t part) {
  if (part >= shares.size()) throw std::out_of_range("split part out of range");
  auto bounds = split_boundaries(shares, n);
  auto perm = numpy_permutation(seed, n);
  int64_t lo = std::max<int64_t>(0, bounds[part]), hi = std::min<int64_t>(n, bounds[part + 1]);
  if (hi <= lo) return {};
  return {perm.begin() + lo, perm.begin() + hi};
}

uint64_t fnv1a(std::string_view bytes, uint64_t hash) {
  for (unsigned char c : bytes) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  return hash;
}

uint64_t hash_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(fmt::format("{}: cannot open", path.string()));
  uint64_t hash = 0xcbf29ce484222325ULL;
  std::vector<char> buffer(1 << 16);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    hash = fnv1a(std::string_view(buffer.data(), static_cast<size_t>(in.gcount())), hash);
  }
  return hash;
}

}  // namespace dschat
