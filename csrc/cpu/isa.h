// The x86-64 instruction sets cnnkit's CPU kernels are compiled for, which of
// them the processor supports, and which the matrix product (gemm.h) runs on.
//
// The CPU kernels are built once per instruction set, as separate modules
// (setup.py); cnnkit._C, built for the baseline, tells Python which the
// processor can run, and Python loads the best one, or the one
// CNNKIT_CPU_ISA names. Inside a module the matrix product, whose kernels
// for every instruction set are compiled in their own translation units
// (gemm_avx512.cpp, ...), runs on the module's instruction set, or on a
// narrower one that set_isa() picks (tests run every product variant). On
// other architectures only `generic` exists.
#pragma once

#include <string>
#include <vector>

namespace cnnkit::cpu {

enum class Isa { generic, avx2, avx512 };

const char* isa_name(Isa isa);
// Whether this processor (and build) can run kernels compiled for `isa`.
bool isa_supported(Isa isa);
// Every instruction set the processor supports, best first; in a CPU kernel
// module, only those no wider than the module's own.
std::vector<Isa> supported_isas();
// The instruction set the matrix product runs on now: the module's own unless
// set_isa() said otherwise.
Isa active_isa();
// Runs the matrix product on `name` from now on ("": the module's own);
// errors if it is not among supported_isas().
void set_isa(const std::string& name);

}  // namespace cnnkit::cpu
