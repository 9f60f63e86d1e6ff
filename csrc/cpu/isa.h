// The x86-64 instruction sets cnnkit's CPU kernels are compiled for, and the
// one they run on: the best the processor supports, unless CNNKIT_CPU_ISA
// (avx512, avx2 or generic) names another, or set_isa() does (tests run every
// variant the machine supports). Kernels for each instruction set live in
// their own translation unit compiled for it (gemm_avx512.cpp, ...); the rest
// of the extension is built for baseline x86-64, so one built extension runs
// on any x86-64 processor. On other architectures only `generic` exists.
#pragma once

#include <string>
#include <vector>

namespace cnnkit::cpu {

enum class Isa { generic, avx2, avx512 };

const char* isa_name(Isa isa);
// Whether this processor (and build) can run kernels compiled for `isa`.
bool isa_supported(Isa isa);
// Every supported instruction set, best first.
std::vector<Isa> supported_isas();
// The instruction set kernels run on now.
Isa active_isa();
// Runs kernels on `name` from now on ("" returns to the default choice);
// errors if the processor lacks it.
void set_isa(const std::string& name);

}  // namespace cnnkit::cpu
