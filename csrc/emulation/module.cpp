// cnnkit._C_emu: the CUDA kernels of csrc/cuda/, compiled as host C++ against
// csrc/emulation/cuda_emulation.h, registered as torch.ops.cnnkit_emu.* for
// CPU tensors with the schemas of torch.ops.cnnkit.*. For testing the CUDA
// kernels where there is no GPU.
#include <torch/extension.h>
#include <torch/library.h>

#include "emulation/runtime.h"
#include "schemas.h"

namespace cnnkit::emulation::selftest {
void register_selftests(pybind11::module_& m);
}

TORCH_LIBRARY(cnnkit_emu, m) { cnnkit::define_ops(m); }

PYBIND11_MODULE(_C_emu, m) {
  m.doc() =
      "cnnkit's CUDA kernels run on the CPU by an emulation of the CUDA execution model; "
      "registers torch.ops.cnnkit_emu.* (the schemas of torch.ops.cnnkit.*) for CPU tensors";
#if defined(__SANITIZE_ADDRESS__)
  m.attr("sanitizer") = "address";
#elif defined(__SANITIZE_THREAD__)
  m.attr("sanitizer") = "thread";
#else
  m.attr("sanitizer") = pybind11::none();
#endif
  m.def(
      "launch_statistics",
      [] {
        pybind11::dict out;
        for (const auto& [name, count] : cnnkit::emulation::launch_statistics()) {
          out[pybind11::str(name)] = pybind11::make_tuple(count.launches, count.blocks);
        }
        return out;
      },
      "{kernel: (launches, blocks)} since the module was loaded or last reset");
  m.def("reset_launch_statistics", &cnnkit::emulation::reset_launch_statistics);
  m.def("set_wide_indices", &cnnkit::emulation::set_wide_indices,
        "when on, the host code takes its 64-bit index paths whatever the tensor sizes");
  m.def("wide_indices", &cnnkit::emulation::wide_indices);
  cnnkit::emulation::selftest::register_selftests(m);
}
