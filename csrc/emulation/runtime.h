// What the emulator (runtime.cpp) offers the host side: launch statistics
// (which kernels ran, how often, over how many blocks) and the switch to the
// 64-bit index paths.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace cnnkit::emulation {

struct LaunchCount {
  std::int64_t launches = 0;
  std::int64_t blocks = 0;
};

// Kernel (as its launch spells it, template arguments included) -> counts.
std::map<std::string, LaunchCount> launch_statistics();
void reset_launch_statistics();

// When set, the host code takes its 64-bit index paths whatever the tensor
// sizes (csrc/cuda/helpers.cuh's fits_int32), so small tests reach them.
bool wide_indices();
void set_wide_indices(bool on);

}  // namespace cnnkit::emulation
