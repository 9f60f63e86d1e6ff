// Winograd minimal filtering for 3x3 stride-1 convolutions on the CPU
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//
// F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input
// tile with (m+2)^2 multiplications per (input, output) channel pair instead
// of 9 m^2 (m = 2 for float32, 4 for float64): every tile product becomes
// an element-wise product in a transformed domain, and summed over channels
// it is one matrix product per transform element. Same argument and result
// contract as conv2d.h's engine (weights (1, G, K/G, C/G*9), biases (1, K)
// or untied (K, P, Q)), for the problems use_winograd accepts.
#pragma once

#include <ATen/core/Tensor.h>

#include "problem.h"

namespace cnnkit::cpu {

// Whether conv2d.cpp's entry points should run this engine for the problem and
// dtype: a 3x3 kernel at stride 1, undilated, one tile phase, float32 or
// float64, and then as the environment variable CNNKIT_CONV_ENGINE says
// (read on every call): "winograd" wherever applicable, "direct" never,
// "auto" (the default) where it is faster than the direct engine.
bool use_winograd(const Conv2dProblem& pb, at::ScalarType dtype);

// Z (N, K, P, Q).
at::Tensor winograd_forward(const Conv2dProblem& pb, const at::Tensor& input,
                            const at::Tensor& weight_phases, const at::Tensor& bias_phases);
// dV (N, C, H, W).
at::Tensor winograd_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                   const at::Tensor& weight_phases);
// dK (1, G, K/G, C/G*9).
at::Tensor winograd_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                    const at::Tensor& input);

}  // namespace cnnkit::cpu
