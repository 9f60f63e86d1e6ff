// Tiled convolution on CUDA, SPEC 1.4: the ops of conv_ops.h over the engine
// of conv2d.cuh, which runs every tile phase with that phase's kernel (forward
// and weight gradient: the phases as independent GEMMs of one launch; input
// gradient: all phases summed inside one fixed-order reduction per input pixel).
//
// The engine wants the weight phase-major, (tH, tW, K, C/G, R, S) in memory.
// The TiledConv2d layer stores its weight that way (a (K, C/G, R, S, tH, tW)
// view of phase-major memory), so it is read in place; any other weight is
// copied once. The weight gradient is returned in the same phase-major
// memory, viewed as (K, C/G, R, S, tH, tW), with no transposing copy.
#include <torch/library.h>

#include "conv_ops.h"
#include "cuda/conv2d.cuh"

TORCH_LIBRARY_IMPL(CNNKIT_CUDA_LIBRARY, CNNKIT_CUDA_DISPATCH_KEY, m) {
  CNNKIT_REGISTER_TILED_CONV2D_OPS(m, cnnkit::cuda::Backend);
}
