// The CPU convolution engine shared by dense convolution (conv2d.cpp) and tiled
// convolution (tiled_conv2d.cpp).
//
// A tiled convolution with tiles (tH, tW) is tH*tW dense convolutions, one per
// tile phase (a, b): the output locations p = a + i*tH, q = b + j*tW form a
// convolution with stride (s*tH, s*tW) whose padding is shifted by (a*s, b*s),
// computed with kernel tile (a, b). A dense convolution is the one-phase case.
//
// Weights are given per phase as (T, G, K/G, C/G*R*S) with T = tH*tW; biases
// as (T, K), one per output channel of each phase, or, when pb.untied_bias,
// as (K, P, Q), one per output location; or undefined. Tensors are contiguous
// NCHW.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/backend.h"
#include "problem.h"

namespace cnnkit::cpu {

// Z (N, K, P, Q).
at::Tensor conv_forward(const Conv2dProblem& pb, const at::Tensor& input,
                        const at::Tensor& weight_phases, const at::Tensor& bias_phases);
// dV (N, C, H, W).
at::Tensor conv_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                               const at::Tensor& weight_phases);
// dK per phase, (T, G, K/G, C/G*R*S).
at::Tensor conv_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                const at::Tensor& input);
// db[k, a, b] = sum of G[n, k, p, q] over n and the locations of phase (a, b): (K, tH, tW).
at::Tensor conv_bias_backward(const at::Tensor& grad_output, int64_t tile_h, int64_t tile_w);

// A (K, C/G, R, S, tH, tW) weight copied to phase-major memory (tiled_conv2d.cpp).
at::Tensor tiles_outermost(const at::Tensor& weight);

// The CPU backend of the ops in csrc/conv_ops.h.
struct Backend {
  using DeviceScope = cpu::DeviceScope;
  static constexpr auto conv_forward = &cpu::conv_forward;
  static constexpr auto conv_input_backward = &cpu::conv_input_backward;
  static constexpr auto conv_weight_backward = &cpu::conv_weight_backward;
  static constexpr auto conv_bias_backward = &cpu::conv_bias_backward;
  static constexpr auto tiles_outermost = &cpu::tiles_outermost;
};

}  // namespace cnnkit::cpu
