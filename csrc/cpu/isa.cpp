#include "cpu/isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstring>

namespace cnnkit::cpu {
namespace {

constexpr Isa kAllIsas[] = {Isa::avx512, Isa::avx2, Isa::generic};

// The CPU kernel module's own instruction set (CNNKIT_MODULE_ISA, set by
// setup.py), or, in cnnkit._C, the widest.
#define CNNKIT_STRINGIFY2(x) #x
#define CNNKIT_STRINGIFY(x) CNNKIT_STRINGIFY2(x)
Isa module_isa() {
#ifdef CNNKIT_MODULE_ISA
  const char* name = CNNKIT_STRINGIFY(CNNKIT_MODULE_ISA);
  for (Isa isa : kAllIsas) {
    if (std::strcmp(name, isa_name(isa)) == 0) return isa;
  }
#endif
  return Isa::avx512;
}

Isa parse_isa(const std::string& name, const char* where) {
  for (Isa isa : kAllIsas) {
    if (name == isa_name(isa)) {
      TORCH_CHECK(static_cast<int>(isa) <= static_cast<int>(module_isa()), where, ": ", name,
                  " is wider than this CPU kernel module's ", isa_name(module_isa()));
      TORCH_CHECK(isa_supported(isa), where, ": this processor does not support ", name,
                  "; supported: ", [] {
                    std::string names;
                    for (Isa s : supported_isas()) names += (names.empty() ? "" : ", ") + std::string(isa_name(s));
                    return names;
                  }());
      return isa;
    }
  }
  TORCH_CHECK(false, where, ": expected one of avx512, avx2 or generic, but got '", name, "'");
}

Isa default_isa() { return supported_isas().front(); }

// -1: not chosen yet.
std::atomic<int> chosen{-1};

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    case Isa::generic: return "generic";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  if (isa == Isa::generic) return true;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (isa == Isa::avx2) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == Isa::avx512) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  }
#endif
  return false;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> isas;
  for (Isa isa : kAllIsas) {
    if (static_cast<int>(isa) <= static_cast<int>(module_isa()) && isa_supported(isa)) {
      isas.push_back(isa);
    }
  }
  return isas;
}

Isa active_isa() {
  int isa = chosen.load(std::memory_order_relaxed);
  if (isa < 0) {
    isa = static_cast<int>(default_isa());
    chosen.store(isa, std::memory_order_relaxed);
  }
  return static_cast<Isa>(isa);
}

void set_isa(const std::string& name) {
  chosen.store(name.empty() ? static_cast<int>(default_isa())
                            : static_cast<int>(parse_isa(name, "cnnkit set_cpu_isa")),
               std::memory_order_relaxed);
}

}  // namespace cnnkit::cpu
