// Launch statistics of the emulator (runtime.cpp), read by the module
// (module.cpp): which kernels ran, how often, over how many blocks.
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

}  // namespace cnnkit::emulation
