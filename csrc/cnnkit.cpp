// Module init of cnnkit._C and the library torch.ops.cnnkit.
//
// Ops are dispatcher ops `torch.ops.cnnkit.*`, their schemas in csrc/schemas.h.
// Kernels register themselves at the bottom of their own files (csrc/cpu/*.cpp
// for CPU, csrc/cuda/*.cu for CUDA); fake kernels for torch.compile live in
// cnnkit/_fake.py and autograd in cnnkit/_autograd.py.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "cpu/fma_peak.h"
#include "cpu/isa.h"
#include "schemas.h"

#ifdef CNNKIT_WITH_CUDA
#include <cuda.h>  // CUDA_VERSION
#endif

namespace cnnkit {
namespace {

#ifdef CNNKIT_WITH_CUDA
constexpr bool kBuiltWithCuda = true;
#else
constexpr bool kBuiltWithCuda = false;
#endif

// A CUDA tensor must never go through the CPU silently: ops without a CUDA
// kernel answer CUDA inputs with this error instead of the dispatcher's generic one.
void no_cuda_kernel(const c10::OperatorHandle& op, torch::jit::Stack* /*stack*/) {
  std::string name = op.schema().name();  // "cnnkit::conv2d"
  name.replace(name.find("::"), 2, ".");
  TORCH_CHECK(false, name, ": not built for CUDA: this cnnkit build has no CUDA kernel for ",
              "this operation (CUDA sources compiled: ", kBuiltWithCuda ? "yes" : "no",
              "); move the tensors to the CPU with .cpu() to run it there");
}

// Gives every cnnkit op without a CUDA kernel the error kernel above for the
// CUDA key. Runs when the module is imported, after the static registrations
// of every kernel file, so the ops that lack a CUDA kernel are read off the
// dispatcher rather than kept in a list. The library object lives as long as
// the process, as the registrations must.
void register_missing_cuda_kernels() {
  static auto* library = new torch::Library(torch::Library::IMPL, "cnnkit", c10::DispatchKey::CUDA,
                                            __FILE__, __LINE__);
  for (const auto& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("cnnkit::", 0) != 0) continue;
    const auto op = c10::Dispatcher::singleton().findOp(name);
    if (op.has_value() && !op->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) {
      library->impl(name.name.substr(std::string("cnnkit::").size()).c_str(),
                    torch::CppFunction::makeFromBoxedFunction<&no_cuda_kernel>());
    }
  }
}

}  // namespace
}  // namespace cnnkit

TORCH_LIBRARY(cnnkit, m) { cnnkit::define_ops(m); }

PYBIND11_MODULE(_C, m) {
  m.doc() = "cnnkit compiled kernels; the ops are registered as torch.ops.cnnkit.*";
  cnnkit::register_missing_cuda_kernels();
  m.attr("with_cuda") = cnnkit::kBuiltWithCuda;
#ifdef CNNKIT_WITH_CUDA
  m.attr("cuda_version") = std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION / 10 % 100);
#else
  m.attr("cuda_version") = pybind11::none();
#endif
  m.def(
      "fma_peak",
      [](bool float64, double seconds) {
        const auto peak = cnnkit::cpu::measure_fma_peak(float64, seconds);
        return pybind11::make_tuple(peak.gflops, peak.isa, peak.threads);
      },
      pybind11::arg("float64") = false, pybind11::arg("seconds") = 1.0,
      "The CPU's measured FMA peak on every intra-op thread: (GFLOP/s, instruction set, "
      "threads).");
  m.def(
      "cpu_isas",
      [] {
        std::vector<std::string> names;
        for (auto isa : cnnkit::cpu::supported_isas()) names.push_back(cnnkit::cpu::isa_name(isa));
        return names;
      },
      "Every instruction set of cnnkit's CPU kernel modules this processor runs, widest "
      "first.");
}
