#pragma once
// Precompiled for every target: the LibTorch headers nearly every translation unit needs, and nothing more.
#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <fmt/format.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>
