// Tiled convolution on the CPU, SPEC 1.4: the ops of conv_ops.h over the dense
// engine of conv2d.h, which runs once per tile phase with that phase's kernel:
// over patches unfolded once per phase (together once per output location),
// as for a dense convolution, or, on large images, over shifted views of the
// input's polyphase components (conv2d.cpp's tap products).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "conv_ops.h"
#include "cpu/conv2d.h"
#include "cpu/im2col.h"
#include "cpu/memory.h"
#include "problem.h"

namespace cnnkit::cpu {

// The tile axis moved from innermost to outermost: src (rows, T) -> dst
// (T, rows), both contiguous. For a weight (K, C/G, R, S, tH, tW) stored
// row-major this gives one (K, C/G*R*S) matrix per tile phase. Blocks of
// kBlock rows: the block's rows x T entries fit in L1, so both sides are read
// or written in runs of contiguous memory (several times faster than a
// generic permuted copy for T of 4 or 16).
at::Tensor tiles_outermost(const at::Tensor& weight) {
  const auto src = weight.contiguous();
  const int64_t T = weight.size(4) * weight.size(5), rows = weight.numel() / T;
  auto dst = empty_large({src.numel()}, src.options());
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "cnnkit_tiles_outermost", [&] {
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* out = dst.mutable_data_ptr<scalar_t>();
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

}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  CNNKIT_REGISTER_TILED_CONV2D_OPS(m, cnnkit::cpu::Backend);
}
