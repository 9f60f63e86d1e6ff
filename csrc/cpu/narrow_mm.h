// Matrix products with one narrow dimension (at most kNarrow), streamed.
//
// A tiled convolution on a small image has one weight matrix per tile phase
// but only a few output locations per phase: with 4x4 tiles on 4x512x7x7,
// each phase multiplies a 512 x 4608 weight (9.4 MB) by 4 to 16 patch
// columns. Such a product does a few multiply-adds per weight element loaded,
// so its time is the time to stream the weight through memory once; BLAS,
// built for the reuse of square-ish blocks, reads it at about half the rate
// of a plain sum over it (measured on those phases, one forward: 28 ms
// through BLAS, 14 ms for a sum over the weight).
//
// The two products that read the weight, each reading it from memory once,
// with the narrow operand and the partial results in registers or L1:
//
//   narrow right   C (m x n) = A (m x l) @ B (l x n)   forward, A the weight
//   narrow left    C (n x l) = B (n x m) @ A (m x l)   input gradient, A the weight
//
// (The weight gradient, which writes a weight-sized result, runs as fast on
// BLAS: measured, a streamed version was no faster, with or without
// non-temporal stores.) Past 16 columns BLAS catches up (measured at 36 to 64
// on 4x256x14x14 and 4x512x14x14 with 4x4 tiles: equal forward, input
// gradient 1.25 to 1.7x faster on BLAS), so kNarrow is 16.
//
// Each output element is one sum in a fixed order over the inner dimension,
// whatever the number of threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace cnnkit::cpu {

constexpr int64_t kNarrow = 16;

// dst[g] = a[g] @ b[g] for (G, rows, cols) tensors, when the product is
// narrow in one of the two ways above (and the matrices read by rows have
// contiguous rows); returns false, doing nothing, otherwise.
bool narrow_mm(const at::Tensor& dst, const at::Tensor& a, const at::Tensor& b);

}  // namespace cnnkit::cpu
