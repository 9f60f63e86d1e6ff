// Depthwise convolution on CUDA (groups == C, no tiles), every dtype: direct
// kernels for the forward pass and both gradients.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <numeric>

#include "cuda/conv2d_gemm.cuh"

namespace cnnkit::cuda::conv {
namespace {

// ------------------------------------------------------------------ depthwise
//
// groups == C: output channel k reads input channel k / multiplier alone. One
// thread per output element, reading its R*S taps (neighbouring threads share
// input rows through L1).

// bias: (K,), or (K, P, Q) when untied_bias; or null.
template <typename scalar_t, typename index_t>
__global__ void depthwise_forward_kernel(const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ weight,
                                         const scalar_t* __restrict__ bias, bool untied_bias,
                                         scalar_t* __restrict__ output, const Geometry geo,
                                         int64_t total) {
  using acc = acc_t<scalar_t>;
  const int multiplier = geo.K / geo.C;
  CNNKIT_KERNEL_LOOP(i, total) {
    index_t idx = i;
    const int q = static_cast<int>(idx % geo.Q);
    idx /= geo.Q;
    const int p = static_cast<int>(idx % geo.P);
    idx /= geo.P;
    const int k = static_cast<int>(idx % geo.K);
    const index_t n = idx / geo.K;
    const scalar_t* plane = input + (n * geo.C + k / multiplier) * static_cast<index_t>(geo.HW);
    const scalar_t* taps = weight + static_cast<index_t>(k) * geo.R * geo.S;
    const int ih0 = p * geo.stride_h - geo.pad_h, iw0 = q * geo.stride_w - geo.pad_w;
    acc sum = acc(0);
    for (int r = 0; r < geo.R; ++r) {
      const int ih = ih0 + r * geo.dilation_h;
      if (static_cast<unsigned>(ih) >= unsigned(geo.H)) continue;
      const scalar_t* in_row = plane + static_cast<index_t>(ih) * geo.W;
      for (int s = 0; s < geo.S; ++s) {
        const int iw = iw0 + s * geo.dilation_w;
        if (static_cast<unsigned>(iw) >= unsigned(geo.W)) continue;
        sum += static_cast<acc>(in_row[iw]) * static_cast<acc>(taps[r * geo.S + s]);
      }
    }
    if (bias != nullptr) {
      const index_t b = untied_bias ? (static_cast<index_t>(k) * geo.P + p) * geo.Q + q : k;
      sum += static_cast<acc>(bias[b]);
    }
    output[i] = static_cast<scalar_t>(sum);
  }
}

// dX[n, c, h, w] = sum over the multiplier's channels k and the taps (r, s)
// whose output location p = (h + pad - r*d)/stride is an integer in [0, P).
template <typename scalar_t, typename index_t>
__global__ void depthwise_input_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                const scalar_t* __restrict__ weight,
                                                scalar_t* __restrict__ grad_input,
                                                const Geometry geo, int64_t total) {
  using acc = acc_t<scalar_t>;
  const int multiplier = geo.K / geo.C;
  CNNKIT_KERNEL_LOOP(i, total) {
    index_t idx = i;
    const int w = static_cast<int>(idx % geo.W);
    idx /= geo.W;
    const int h = static_cast<int>(idx % geo.H);
    idx /= geo.H;
    const int c = static_cast<int>(idx % geo.C);
    const index_t n = idx / geo.C;
    acc sum = acc(0);
    for (int mu = 0; mu < multiplier; ++mu) {
      const int k = c * multiplier + mu;
      const scalar_t* plane = grad_output + (n * geo.K + k) * static_cast<index_t>(geo.PQ);
      const scalar_t* taps = weight + static_cast<index_t>(k) * geo.R * geo.S;
      for (int r = 0; r < geo.R; ++r) {
        const int ph = h + geo.pad_h - r * geo.dilation_h;
        if (ph < 0) break;  // decreases with r
        // (The stride tests are uniform branches: stride 1 skips the divisions.)
        if (geo.stride_h > 1 && ph % geo.stride_h != 0) continue;
        const int p = geo.stride_h > 1 ? ph / geo.stride_h : ph;
        if (p >= geo.P) continue;
        const scalar_t* out_row = plane + static_cast<index_t>(p) * geo.Q;
        for (int s = 0; s < geo.S; ++s) {
          const int pw = w + geo.pad_w - s * geo.dilation_w;
          if (pw < 0) break;
          if (geo.stride_w > 1 && pw % geo.stride_w != 0) continue;
          const int q = geo.stride_w > 1 ? pw / geo.stride_w : pw;
          if (q >= geo.Q) continue;
          sum += static_cast<acc>(out_row[q]) * static_cast<acc>(taps[r * geo.S + s]);
        }
      }
    }
    grad_input[i] = static_cast<scalar_t>(sum);
  }
}

// dW[k, r, s] over a slice of the N*P*Q output locations: one block per
// (k, r, s) (blockIdx.x) and slice (blockIdx.y); each thread sums locations
// tid, tid + 256, ... of the slice in order, then the block sums the threads.
template <typename scalar_t, typename index_t>
__global__ void depthwise_weight_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                 const scalar_t* __restrict__ input,
                                                 acc_t<scalar_t>* __restrict__ partial,
                                                 const Geometry geo) {
  using acc = acc_t<scalar_t>;
  const int multiplier = geo.K / geo.C;
  const int RS = geo.R * geo.S;
  const int e = blockIdx.x;
  const int k = e / RS, r = (e % RS) / geo.S, s = e % geo.S;
  const int64_t length = int64_t{geo.N} * geo.PQ;
  const index_t begin = static_cast<index_t>(length * blockIdx.y / gridDim.y);
  const index_t end = static_cast<index_t>(length * (blockIdx.y + 1) / gridDim.y);
  const scalar_t* g_channel = grad_output + static_cast<index_t>(k) * geo.PQ;
  const scalar_t* x_channel = input + static_cast<index_t>(k / multiplier) * geo.HW;
  const index_t g_sample = static_cast<index_t>(geo.K) * geo.PQ;
  const index_t x_sample = static_cast<index_t>(geo.C) * geo.HW;
  const int rd = r * geo.dilation_h - geo.pad_h, sd = s * geo.dilation_w - geo.pad_w;
  acc sum = acc(0);
  index_t l = begin + threadIdx.x;
  if (l < end) {
    GridCursor pixel;
    pixel.seek(l, geo.P, geo.Q);
    const GridStep step = grid_step(kThreads, geo.P, geo.Q);
    for (; l < end; l += kThreads) {
      const int ih = pixel.i * geo.stride_h + rd, iw = pixel.j * geo.stride_w + sd;
      if (static_cast<unsigned>(ih) < unsigned(geo.H) &&
          static_cast<unsigned>(iw) < unsigned(geo.W)) {
        const scalar_t gv =
            g_channel[pixel.n * g_sample + static_cast<index_t>(pixel.i) * geo.Q + pixel.j];
        const scalar_t xv = x_channel[pixel.n * x_sample + static_cast<index_t>(ih) * geo.W + iw];
        sum += static_cast<acc>(gv) * static_cast<acc>(xv);
      }
      pixel.advance(step, geo.P, geo.Q);
    }
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[int64_t{blockIdx.y} * gridDim.x + e] = sum;
}

}  // namespace

void depthwise_forward(const Geometry& geo, const at::Tensor& input, const at::Tensor& weight,
                       const at::Tensor& bias, bool untied_bias, at::Tensor& output) {
  const int64_t total = output.numel();
  CNNKIT_DISPATCH_CUDA_FLOATING(input.scalar_type(), "cnnkit_depthwise_forward", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({input.numel(), output.numel(), weight.numel()}), [&] {
      CNNKIT_LAUNCH(grid_for(total), kThreads, 0, current_stream(),
                    depthwise_forward_kernel<scalar_t, index_t>)(
          input.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
          bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr, untied_bias,
          output.mutable_data_ptr<scalar_t>(), geo, total);
      CNNKIT_CHECK_LAUNCH();
    });
  });
}

void depthwise_input_backward(const Geometry& geo, const at::Tensor& grad_output,
                              const at::Tensor& weight, at::Tensor& grad_input) {
  const int64_t total = grad_input.numel();
  CNNKIT_DISPATCH_CUDA_FLOATING(grad_output.scalar_type(), "cnnkit_depthwise_input_backward", [&] {
    CNNKIT_DISPATCH_INDEX(
        fits_int32({grad_output.numel(), grad_input.numel(), weight.numel()}), [&] {
          CNNKIT_LAUNCH(grid_for(total), kThreads, 0, current_stream(),
                        depthwise_input_backward_kernel<scalar_t, index_t>)(
              grad_output.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
              grad_input.mutable_data_ptr<scalar_t>(), geo, total);
          CNNKIT_CHECK_LAUNCH();
        });
  });
}

void depthwise_weight_backward(const Geometry& geo, const at::Tensor& grad_output,
                               const at::Tensor& input, at::Tensor& grad_weight) {
  const int64_t outputs = grad_weight.numel();  // K*R*S
  TORCH_CHECK(outputs <= std::numeric_limits<int32_t>::max(),
              geo.op, ": depthwise weight gradient too large for one CUDA grid (", outputs,
              " weights)");
  const int64_t slices = slice_count(outputs, int64_t{geo.N} * geo.PQ, 4096);
  const auto acc_dtype = at::toOpMathType(grad_weight.scalar_type());
  auto partial = at::empty({slices, outputs}, grad_weight.options().dtype(acc_dtype));
  CNNKIT_DISPATCH_CUDA_FLOATING(input.scalar_type(), "cnnkit_depthwise_weight_backward", [&] {
    CNNKIT_DISPATCH_INDEX(fits_int32({grad_output.numel(), input.numel()}), [&] {
      const dim3 grid(static_cast<unsigned>(outputs), static_cast<unsigned>(slices));
      CNNKIT_LAUNCH(grid, kThreads, 0, current_stream(),
                    depthwise_weight_backward_kernel<scalar_t, index_t>)(
          grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
          partial.mutable_data_ptr<acc_t<scalar_t>>(), geo);
      CNNKIT_CHECK_LAUNCH();
    });
  });
  sum_slices(partial, grad_weight, slices, outputs);
}


}  // namespace cnnkit::cuda::conv
