// Kernels that test the emulator itself (tests/test_emulation.py): what it
// must report as errors (a barrier some threads never reach, launch limits,
// WMMA's alignment rule) and what it must get right (shared memory per block,
// warp shuffles, WMMA products, the poisoning of fresh shared memory).
// Written in the CUDA dialect of csrc/cuda/, compiled into cnnkit._C_emu only.
#include <torch/extension.h>

#include <cstdint>

#include "cuda/helpers.cuh"
#include "emulation/runtime.h"

namespace cnnkit::emulation::selftest {
namespace {

using cnnkit::cuda::current_stream;

// Threads below `exiting` return before the block's barrier.
__global__ void early_exit_kernel(int* out, int exiting) {
  if (static_cast<int>(threadIdx.x) < exiting) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Warp 0 waits at a warp barrier, the rest of the block at the block barrier.
__global__ void mismatched_barriers_kernel(int* out) {
  if (threadIdx.x < 32) {
    __syncwarp();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void write_index_kernel(int* out) { out[blockIdx.x * blockDim.x + threadIdx.x] = 1; }

__global__ void dynamic_shared_kernel(float* out, int count) {
  CNNKIT_DYNAMIC_SHARED(bytes);
  float* values = reinterpret_cast<float*>(bytes);
  if (threadIdx.x == 0) out[0] = values[count - 1];  // never written: the poison
  __syncthreads();
  for (int i = threadIdx.x; i < count; i += blockDim.x) values[i] = static_cast<float>(i);
  __syncthreads();
  float sum = 0;
  for (int i = 0; i < count; ++i) sum += values[i];
  if (threadIdx.x == 0) out[1] = sum;
}

// Each block stores its index in shared memory, waits, and reads it back:
// blocks that shared the storage would read one another's.
__global__ void shared_per_block_kernel(int* out) {
  __shared__ int block_value[4];
  if (threadIdx.x < 4) block_value[threadIdx.x] = static_cast<int>(blockIdx.x);
  __syncthreads();
  int seen = block_value[threadIdx.x % 4];
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = seen;
}

// Lane 0 of every warp gets the sum of the lanes' values by shuffles.
__global__ void shuffle_sum_kernel(const double* in, double* out) {
  double v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
}

// One warp: d = a b for 16x16 tiles, a row-major and b column-major, in half;
// a read from `misalign` elements past its (aligned) start.
__global__ void wmma_kernel(const __half* a, const __half* b, float* d, int misalign) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a + misalign, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::fill_fragment(fc, 0.0f);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d, fc, 16, wmma::mem_row_major);
}

at::Tensor ints(int64_t n) { return at::zeros({n}, at::kInt); }

void early_exit(int64_t threads, int64_t exiting) {
  auto out = ints(threads);
  CNNKIT_LAUNCH(1, static_cast<unsigned>(threads), 0, current_stream(), early_exit_kernel)(
      out.data_ptr<int>(), static_cast<int>(exiting));
}

void mismatched_barriers() {
  auto out = ints(64);
  CNNKIT_LAUNCH(1, 64, 0, current_stream(), mismatched_barriers_kernel)(out.data_ptr<int>());
}

int64_t launch(std::vector<int64_t> grid, std::vector<int64_t> block) {
  const dim3 g(grid[0], grid[1], grid[2]), b(block[0], block[1], block[2]);
  auto out = ints(std::max<int64_t>(1, block[0] * grid[0]));
  const bool writes = grid[1] == 1 && grid[2] == 1 && block[1] == 1 && block[2] == 1;
  if (writes) {
    CNNKIT_LAUNCH(g, b, 0, current_stream(), write_index_kernel)(out.data_ptr<int>());
  } else {
    CNNKIT_LAUNCH(g, b, 0, current_stream(), early_exit_kernel)(out.data_ptr<int>(), 0);
  }
  return out.sum().item<int64_t>();
}

at::Tensor dynamic_shared(int64_t bytes, int64_t opt_in) {
  if (opt_in > 0) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(dynamic_shared_kernel,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(opt_in)));
  }
  auto out = at::zeros({2}, at::kFloat);
  CNNKIT_LAUNCH(1, 128, static_cast<std::size_t>(bytes), current_stream(), dynamic_shared_kernel)(
      out.data_ptr<float>(), static_cast<int>(bytes / 4));
  return out;
}

at::Tensor shared_per_block(int64_t blocks) {
  auto out = ints(blocks * 64);
  CNNKIT_LAUNCH(static_cast<unsigned>(blocks), 64, 0, current_stream(),
                shared_per_block_kernel)(out.data_ptr<int>());
  return out.view({blocks, 64});
}

at::Tensor shuffle_sum(const at::Tensor& in) {
  TORCH_CHECK(in.scalar_type() == at::kDouble && in.is_contiguous() && in.numel() % 256 == 0);
  auto out = at::zeros({in.numel() / 32}, in.options());
  CNNKIT_LAUNCH(static_cast<unsigned>(in.numel() / 256), 256, 0, current_stream(),
                shuffle_sum_kernel)(in.data_ptr<double>(), out.data_ptr<double>());
  return out;
}

// a (16, 16) and bt = b transposed (16, 16), float16, row-major (so b is
// column-major); returns a b in float32, reading a from `misalign` elements
// past a 256-bit aligned address.
at::Tensor wmma_product(const at::Tensor& a, const at::Tensor& bt, int64_t misalign) {
  auto a_storage = at::zeros({16 * 16 + 16}, a.options());  // CPU storage: 64-byte aligned
  a_storage.narrow(0, misalign, 256).copy_(a.reshape({256}));
  const auto b = bt.contiguous();
  auto out = at::zeros({16, 16}, at::kFloat);
  CNNKIT_LAUNCH(1, 32, 0, current_stream(), wmma_kernel)(
      reinterpret_cast<const __half*>(a_storage.data_ptr<at::Half>()),
      reinterpret_cast<const __half*>(b.data_ptr<at::Half>()), out.data_ptr<float>(),
      static_cast<int>(misalign));
  return out;
}

}  // namespace

void register_selftests(pybind11::module_& m) {
  auto t = m.def_submodule("selftest", "kernels that test the emulator itself");
  t.def("early_exit", &early_exit, "threads below `exiting` skip the block barrier");
  t.def("mismatched_barriers", &mismatched_barriers);
  t.def("launch", &launch, "a trivial kernel on grid and block (x, y, z); threads that ran");
  t.def("dynamic_shared", &dynamic_shared,
        "[first value read before any write, sum of 0..n-1] with `bytes` of dynamic shared "
        "memory, after opting in to `opt_in` bytes when positive");
  t.def("shared_per_block", &shared_per_block);
  t.def("shuffle_sum", &shuffle_sum);
  t.def("wmma_product", &wmma_product);
}

}  // namespace cnnkit::emulation::selftest
