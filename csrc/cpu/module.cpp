// The Python face of a CPU kernel module (cnnkit._C_cpu_<isa>, setup.py):
// which instruction set it was built for and its matrix product runs on. Its
// ops register themselves with the dispatcher when the module is loaded
// (TORCH_LIBRARY_IMPL in each kernel file).
#include <torch/extension.h>

#include <string>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/isa.h"

#define CNNKIT_STR2(x) #x
#define CNNKIT_STR(x) CNNKIT_STR2(x)

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace cnnkit::cpu;
  m.doc() = "cnnkit's CPU kernels for one instruction set; cnnkit loads the best the processor runs";
  m.attr("isa") = CNNKIT_STR(CNNKIT_MODULE_ISA);
  m.attr("cpu_capability") = CNNKIT_STR(CPU_CAPABILITY);
  m.def(
      "cpu_isa", [] { return std::string(isa_name(active_isa())); },
      "The instruction set the matrix product runs on: avx512, avx2 or generic.");
  m.def(
      "cpu_isas",
      [] {
        std::vector<std::string> names;
        for (Isa isa : supported_isas()) names.push_back(isa_name(isa));
        return names;
      },
      "The instruction sets the matrix product can run on here, widest first.");
  m.def("set_cpu_isa", &set_isa, pybind11::arg("name"),
        "Runs the matrix product on instruction set `name` (\"\": the module's own).");
  m.def(
      "matmul",
      [](const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
        matmul(out, a, b, accumulate);
      },
      pybind11::arg("out"), pybind11::arg("a"), pybind11::arg("b"),
      pybind11::arg("accumulate") = false,
      "out (+)= a @ b on cnnkit's CPU matrix product (2-D float32/float64 CPU tensors).");
}
