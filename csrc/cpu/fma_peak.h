// The processor's measured floating-point peak (csrc/cpu/fma_peak.cpp).
#pragma once

namespace cnnkit::cpu {

struct FmaPeak {
  double gflops;    // multiply-adds count two floating-point operations
  const char* isa;  // the instruction set the loop ran on: "avx512", "avx2" or "scalar"
  int threads;      // intra-op threads that ran it at once
};

// Runs the FMA throughput loop on every intra-op thread for about `seconds`;
// float64 or float32 lanes.
FmaPeak measure_fma_peak(bool float64, double seconds);

}  // namespace cnnkit::cpu
