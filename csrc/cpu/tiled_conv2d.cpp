// Tiled convolution on the CPU, SPEC 1.4: the dense engine of conv2d.h, run once
// per tile phase with that phase's kernel. Patches are unfolded once per phase
// (together once per output location), as for a dense convolution.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/conv2d.h"
#include "cpu/im2col.h"
#include "cpu/memory.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

// Moves the tile axis from innermost to outermost: src (rows, T) -> dst
// (T, rows), both contiguous. For a weight (K, C/G, R, S, tH, tW) stored
// row-major this gives one (K, C/G*R*S) matrix per tile phase.
at::Tensor tiles_outermost(const at::Tensor& src, int64_t rows, int64_t T) {
  auto dst = empty_large({src.numel()}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "cnnkit_tiles_outermost", [&] {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
    // Blocks of kBlock rows: the block's rows x T entries fit in L1, so both
    // sides are read or written in runs of contiguous memory.
    constexpr int64_t kBlock = 64;
    at::parallel_for(0, ceil_div(rows, kBlock), 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kBlock, r1 = std::min(rows, r0 + kBlock);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t r = r0; r < r1; ++r) out[t * rows + r] = in[r * T + t];
        }
      }
    });
  });
  return dst;
}

// (K, C/G, R, S, tH, tW) -> one (G, K/G, C/G*R*S) matrix per phase (a, b),
// phase-major. A weight stored phase-major (the layout TiledConv2d gives its
// parameter, and the weight gradient's layout) is that matrix already: a view,
// no copy. Any other layout is transposed.
at::Tensor tiled_phases(const Conv2dProblem& pb, const at::Tensor& weight) {
  const int64_t T = pb.tile_h * pb.tile_w;
  const auto phase_major = weight.permute({4, 5, 0, 1, 2, 3});
  const auto phases = phase_major.is_contiguous()
                          ? phase_major
                          : tiles_outermost(weight.contiguous(), weight.numel() / T, T);
  return phases.view({T, pb.groups, pb.group_out_channels(), pb.patch_size()});
}

at::Tensor tiled_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto pb = tiled_conv2d_problem("cnnkit.tiled_conv2d", input, weight, bias, stride, padding,
                                       dilation, groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  // (K, tH, tW) -> (tH*tW, K)
  const auto b = bias.has_value()
                     ? bias->permute({1, 2, 0}).contiguous().view({pb.tile_h * pb.tile_w, pb.K})
                     : at::Tensor();
  auto out = conv_forward(pb, input.contiguous(), tiled_phases(pb, weight), b);
  return out.contiguous(conv_output_format(input, weight));
}

at::Tensor tiled_conv2d_input_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           at::IntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           int64_t groups) {
  const auto pb = tiled_conv2d_input_backward_problem("cnnkit.tiled_conv2d_input_backward",
                                                      grad_output, weight, input_size, stride,
                                                      padding, dilation, groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto dx = conv_input_backward(pb, grad_output.contiguous(), tiled_phases(pb, weight));
  return dx.contiguous(conv_output_format(grad_output, weight));
}

at::Tensor tiled_conv2d_weight_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            at::IntArrayRef kernel_size, at::IntArrayRef tiles,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation, int64_t groups) {
  const auto pb = tiled_conv2d_weight_backward_problem("cnnkit.tiled_conv2d_weight_backward",
                                                       grad_output, input, kernel_size, tiles,
                                                       stride, padding, dilation, groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  // (tH*tW, G, K/G, C/G*R*S), returned as the (K, C/G, R, S, tH, tW) tensor
  // it is, stored phase-major: no transposing copy.
  return conv_weight_backward(pb, grad_output.contiguous(), input.contiguous())
      .view({pb.tile_h, pb.tile_w, pb.K, pb.group_in_channels(), pb.R, pb.S})
      .permute({2, 3, 4, 5, 0, 1});
}

at::Tensor tiled_conv2d_bias_backward_cpu(const at::Tensor& grad_output, at::IntArrayRef tiles) {
  check_tiled_conv2d_bias_backward("cnnkit.tiled_conv2d_bias_backward", grad_output, tiles);
  return conv_bias_backward(grad_output, tiles[0], tiles[1]);
}

}  // namespace
}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  m.impl("tiled_conv2d", &cnnkit::cpu::tiled_conv2d_cpu);
  m.impl("tiled_conv2d_input_backward", &cnnkit::cpu::tiled_conv2d_input_backward_cpu);
  m.impl("tiled_conv2d_weight_backward", &cnnkit::cpu::tiled_conv2d_weight_backward_cpu);
  m.impl("tiled_conv2d_bias_backward", &cnnkit::cpu::tiled_conv2d_bias_backward_cpu);
}
