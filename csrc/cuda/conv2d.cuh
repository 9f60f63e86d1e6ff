// The CUDA convolution engine shared by dense convolution (conv2d.cu) and
// tiled convolution (tiled_conv2d.cu); the same contract as csrc/cpu/conv2d.h.
//
// A tiled convolution with tiles (tH, tW) is tH*tW dense convolutions, one per
// tile phase (a, b): output rows p = a + i*tH (i < P_a) and columns
// q = b + j*tW (j < Q_b), computed with kernel tile (a, b). A dense convolution
// is the one-phase case. Weights are given per phase as (T, G, K/G, C/G*R*S)
// with T = tH*tW, phase t = a*tW + b; biases as (T, K), one per output channel
// of each phase, or, when pb.untied_bias, as (K, P, Q), one per output
// location; or undefined. Data tensors are contiguous NCHW.
//
// Every kernel is an implicit GEMM (no unfolded input in global memory):
//   forward          Z[n,k,p,q]  = sum_{c,r,s} W[k,(c,r,s)] * X[n,c,ih(p,r),iw(q,s)]
//                    M = N*P_a*Q_b output pixels, N_gemm = K/G, K_gemm = C/G*R*S
//   input backward   dX[n,c,h,w] = sum_{k,r,s} W[k,(c,r,s)] * G[n,k,p,q] over the
//                    (r, s) whose (p, q) = ((h + pad - r*d) / stride, ...) is an
//                    integer output location of the phase
//                    M = N*H*W, N_gemm = C/G, K_gemm = K/G*R*S
//   weight backward  dW[k,(c,r,s)] = sum_{n,p,q} G[n,k,p,q] * X[n,c,ih,iw]
//                    M = K/G, N_gemm = C/G*R*S, K_gemm = N*P_a*Q_b, split in a
//                    fixed number of slices whose partial sums are added in a
//                    fixed order (deterministic, no atomics)
#pragma once

#include <ATen/core/Tensor.h>

#include "cuda/helpers.cuh"
#include "problem.h"

namespace cnnkit::cuda {

// Z (N, K, P, Q), contiguous, dtype of input.
at::Tensor conv_forward(const Conv2dProblem& pb, const at::Tensor& input,
                        const at::Tensor& weight_phases, const at::Tensor& bias_phases);
// dX (N, C, H, W), contiguous.
at::Tensor conv_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                               const at::Tensor& weight_phases);
// dW per phase, (T, G, K/G, C/G*R*S), contiguous.
at::Tensor conv_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                const at::Tensor& input);
// db[k, a, b] = sum of G[n, k, p, q] over n and the locations of phase (a, b): (K, tH, tW).
at::Tensor conv_bias_backward(const at::Tensor& grad_output, int64_t tile_h, int64_t tile_w);

// A (K, C/G, R, S, tH, tW) weight copied to phase-major memory.
inline at::Tensor tiles_outermost(const at::Tensor& weight) {
  return weight.permute({4, 5, 0, 1, 2, 3}).contiguous();
}

// The CUDA backend of the ops in csrc/conv_ops.h: kernels run on the device
// of the op's first tensor.
struct Backend {
  using DeviceScope = cuda::DeviceScope;
  static constexpr auto conv_forward = &cuda::conv_forward;
  static constexpr auto conv_input_backward = &cuda::conv_input_backward;
  static constexpr auto conv_weight_backward = &cuda::conv_weight_backward;
  static constexpr auto conv_bias_backward = &cuda::conv_bias_backward;
  static constexpr auto tiles_outermost = &cuda::tiles_outermost;
};

// Tensor-core kernels for float16 and bfloat16 (conv2d_tensor_core.cu), float32
// accumulation, one tile phase per call; conv2d.cu's engine calls them for
// half-precision problems and runs the phase loop itself.
namespace tensor_core {

// output (N, K, P, Q): writes the locations of phase t, adding, when defined,
// bias (K,), the phase's, or when pb.untied_bias the untied (K, P, Q) one.
// weight: the phase's (G, K/G, C/G*R*S) slice.
void forward_phase(const Conv2dProblem& pb, int64_t t, const at::Tensor& input,
                   const at::Tensor& weight, const at::Tensor& bias, at::Tensor& output);
// grad_input_acc (N, C, H, W) float32: adds the contribution of phase t.
void input_backward_phase(const Conv2dProblem& pb, int64_t t, const at::Tensor& grad_output,
                          const at::Tensor& weight, at::Tensor& grad_input_acc);
// grad_weight (G, K/G, C/G*R*S), dtype of input: overwritten with phase t's gradient.
void weight_backward_phase(const Conv2dProblem& pb, int64_t t, const at::Tensor& grad_output,
                           const at::Tensor& input, at::Tensor& grad_weight);

}  // namespace tensor_core
}  // namespace cnnkit::cuda
