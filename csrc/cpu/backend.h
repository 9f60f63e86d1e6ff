// What every CPU backend of the op layers (csrc/conv_ops.h, local_ops.h,
// pool_ops.h) shares.
#pragma once

#include <ATen/core/Tensor.h>

namespace cnnkit::cpu {

// Nothing must hold while CPU kernels run (the CUDA backends hold a device guard).
struct DeviceScope {
  explicit DeviceScope(const at::Tensor&) {}
};

}  // namespace cnnkit::cpu
