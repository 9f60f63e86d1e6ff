// Matrix products with one narrow dimension (at most kNarrow), streamed.
//
// A tiled convolution on a small image has one weight matrix per tile phase
// but only a few output locations per phase: with 4x4 tiles on 4x512x7x7,
// each phase multiplies a 512 x 4608 weight (9.4 MB) by 4 to 16 patch
// columns. Such a product does about one multiply-add per weight element
// loaded, so its time is the time to stream the large matrix through memory
// once; BLAS, which is built for the reuse of square-ish blocks, copies the
// large operand into packed panels first (measured on the phases above: the
// weight read at about half the rate of a plain sum over it).
//
// The three products of a convolution, each with its large matrix streamed
// row by row exactly once and the narrow operand held in registers or L1
// (n <= kNarrow):
//
//   narrow right   C (m x n) = A (m x l) @ B (l x n)   forward, A the weight
//   narrow left    C (n x l) = B (n x m) @ A (m x l)   input gradient, A the weight
//   narrow inner   C (m x l) = D (m x n) @ E (n x l)   weight gradient, C the gradient
//
// Each output element is one sum in a fixed order over the inner dimension,
// whatever the number of threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cnnkit::cpu {

constexpr int64_t kNarrow = 64;

// dst[g] = a[g] @ b[g] for (G, rows, cols) tensors, when the product is
// narrow in one of the three ways above (and the streamed matrices have
// contiguous rows); returns false, doing nothing, otherwise.
bool narrow_mm(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b);

}  // namespace cnnkit::cpu
