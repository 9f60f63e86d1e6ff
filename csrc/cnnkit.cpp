// Module init and every op schema, in one place.
//
// Ops are dispatcher ops `torch.ops.cnnkit.*`. Kernels register themselves at
// the bottom of their own files (csrc/cpu/*.cpp for CPU, csrc/cuda/*.cu for
// CUDA); fake kernels for torch.compile live in cnnkit/_fake.py and autograd in
// cnnkit/_autograd.py.
//
// Padding arguments named `padding` in the convolution ops take 2 entries
// (top = bottom, left = right) or 4 (top, bottom, left, right): 'same' with an
// even kernel pads one more at the bottom/right.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

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

TORCH_LIBRARY(cnnkit, m) {
  // Convolution (SPEC 1.1, 1.2).
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_input_backward(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_weight_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_bias_backward(Tensor grad_output) -> Tensor");
  m.def("conv_transpose2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[2] padding, int[2] output_padding, int groups, int[2] dilation) -> Tensor");

  // Unshared (locally connected) convolution (SPEC 1.3): weight
  // (C_out, OH, OW, C_in/g, kH, kW), bias (C_out, OH, OW).
  m.def("local_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("local_conv2d_input_backward(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("local_conv2d_weight_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("local_conv2d_bias_backward(Tensor grad_output) -> Tensor");

  // Tiled convolution (SPEC 1.4): weight (C_out, C_in/g, kH, kW, tH, tW), bias
  // (C_out, tH, tW); the tiles are read from the weight's shape.
  m.def("tiled_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("tiled_conv2d_input_backward(Tensor grad_output, Tensor weight, int[2] input_size, "
        "int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("tiled_conv2d_weight_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] tiles, int[2] stride, int[] padding, int[2] dilation, int groups) -> Tensor");
  m.def("tiled_conv2d_bias_backward(Tensor grad_output, int[2] tiles) -> Tensor");

  // Pooling (SPEC 1.5). Max pools return (values, indices); indices are flat
  // positions h * W + w within each input plane, as in PyTorch. The max pool
  // backward serves max_pool2d and adaptive_max_pool2d alike.
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor input, Tensor indices) -> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, "
        "int? divisor_override) -> Tensor");
  m.def("adaptive_max_pool2d(Tensor input, int[2] output_size) -> (Tensor, Tensor)");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, Tensor input) -> Tensor");
  // Channel max pool returns (values, indices); indices are the input channel
  // holding each maximum.
  m.def("channel_max_pool(Tensor input, int pool_size) -> (Tensor, Tensor)");
  m.def("channel_max_pool_backward(Tensor grad_output, Tensor input, Tensor indices, "
        "int pool_size) -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "cnnkit compiled kernels; the ops are registered as torch.ops.cnnkit.*";
  cnnkit::register_missing_cuda_kernels();
  m.attr("with_cuda") = cnnkit::kBuiltWithCuda;
#ifdef CNNKIT_WITH_CUDA
  m.attr("cuda_version") = std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION / 10 % 100);
#else
  m.attr("cuda_version") = pybind11::none();
#endif
#define CNNKIT_STR2(x) #x
#define CNNKIT_STR(x) CNNKIT_STR2(x)
  m.attr("cpu_capability") = CNNKIT_STR(CPU_CAPABILITY);
}
