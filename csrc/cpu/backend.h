// What every CPU backend of the op layers (csrc/conv_ops.h, local_ops.h,
// pool_ops.h) shares.
#pragma once

#include <ATen/TensorIterator.h>  // at::internal::GRAIN_SIZE
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

namespace cnnkit::cpu {

// The grain of at::parallel_for for items of `work_per_item` element
// operations each: about GRAIN_SIZE operations per task, so that small
// problems run inline instead of paying for a parallel region.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// Nothing must hold while CPU kernels run (the CUDA backends hold a device guard).
struct DeviceScope {
  explicit DeviceScope(const at::Tensor&) {}
};

}  // namespace cnnkit::cpu
