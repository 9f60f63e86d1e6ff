// Convolution on the CPU: forward, input gradient (= transposed convolution),
// weight gradient and bias gradient.
//
// Each view is a matrix product per sample and group over the patch matrix of
// im2col.h (rows (c, r, s), columns (p, q)):
//
//     forward          Z[n]_g  = K_g (K/G x C/G*R*S) @ col(V[n])_g
//     input gradient   dV[n]   = col2im( K_g^T @ G[n]_g )
//     weight gradient  dK_g   += G[n]_g @ col(V[n])_g^T     (summed over n)
//
// The products go to ATen's BLAS; the data movement (unfolding, folding back,
// bias) is ours. A 1x1 kernel at stride 1 without padding needs no unfolding:
// the input plane set itself is the patch matrix.
//
// Parallelism: with at least as many samples as threads, the batch is split
// into one contiguous range per thread, each with its own scratch patch matrix
// and single-threaded BLAS; with fewer samples, samples run one after another
// and the loops and BLAS inside each run in parallel. Weight-gradient partial
// sums are kept per range and added in range order, so results do not depend
// on thread timing.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include "cpu/im2col.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

bool is_pointwise(const Conv2dProblem& pb) {
  return pb.R == 1 && pb.S == 1 && pb.stride_h == 1 && pb.stride_w == 1 && pb.pad_h == 0 &&
         pb.pad_w == 0 && pb.P == pb.H && pb.Q == pb.W;
}

// Number of contiguous sample ranges to process in parallel (see the top of the file).
int64_t batch_chunks(int64_t N) {
  const int64_t threads = at::get_num_threads();
  return (threads > 1 && N >= threads) ? threads : 1;
}

// fn(chunk, n_begin, n_end) for each of `chunks` contiguous ranges of [0, N).
// Worker threads take the caller's thread-local state (autograd below the
// dispatcher, as the host function set it), since the chunks call ATen ops.
template <typename F>
void for_each_chunk(int64_t N, int64_t chunks, const F& fn) {
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t c = begin; c < end; ++c) fn(c, c * N / chunks, (c + 1) * N / chunks);
  });
}

// dst[g] = a[g] @ b[g] for every group g (tensors of shape (G, rows, cols)).
void grouped_mm(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b) {
  if (dst.size(0) == 1) {
    auto d = dst.select(0, 0);
    at::mm_out(d, a.select(0, 0), b.select(0, 0));
  } else {
    at::bmm_out(dst, a, b);
  }
}

// The patch matrix of sample n as (G, C/G*R*S, P*Q): the input itself for a
// pointwise convolution, else unfolded into `scratch`.
at::Tensor patches(const Conv2dProblem& pb, const at::Tensor& input, int64_t n,
                   at::Tensor& scratch) {
  const auto sample = input.select(0, n);
  if (is_pointwise(pb)) return sample.view({pb.groups, pb.group_in_channels(), pb.H * pb.W});
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_im2col", [&] {
    im2col(sample.const_data_ptr<scalar_t>(), scratch.mutable_data_ptr<scalar_t>(), pb);
  });
  return scratch;
}

at::Tensor patch_scratch(const Conv2dProblem& pb, const at::Tensor& like) {
  if (is_pointwise(pb)) return at::Tensor();
  return at::empty({pb.groups, pb.patch_size(), pb.P * pb.Q}, like.options());
}

// Z = conv2d(V, K) + b for contiguous NCHW V and contiguous K.
at::Tensor forward(const Conv2dProblem& pb, const at::Tensor& input, const at::Tensor& weight,
                   const std::optional<at::Tensor>& bias) {
  auto output = at::empty({pb.N, pb.K, pb.P, pb.Q}, input.options());
  if (output.numel() == 0) return output;
  const int64_t G = pb.groups, Kg = pb.group_out_channels();
  const auto w = weight.view({G, Kg, pb.patch_size()});
  const auto b = bias.has_value() ? bias->view({G, Kg, 1}) : at::Tensor();
  for_each_chunk(pb.N, batch_chunks(pb.N), [&](int64_t, int64_t n0, int64_t n1) {
    auto scratch = patch_scratch(pb, input);
    for (int64_t n = n0; n < n1; ++n) {
      auto out = output.select(0, n).view({G, Kg, pb.P * pb.Q});
      grouped_mm(out, w, patches(pb, input, n, scratch));
      if (b.defined()) out.add_(b);
    }
  });
  return output;
}

// dV = conv2d_input_backward(G, K) for contiguous G (N, K, P, Q) and K.
at::Tensor input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                          const at::Tensor& weight) {
  auto grad_input = at::empty({pb.N, pb.C, pb.H, pb.W}, grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  const int64_t G = pb.groups, Kg = pb.group_out_channels();
  const auto w_t = weight.view({G, Kg, pb.patch_size()}).transpose(1, 2);
  const bool pointwise = is_pointwise(pb);
  for_each_chunk(pb.N, batch_chunks(pb.N), [&](int64_t, int64_t n0, int64_t n1) {
    auto scratch = patch_scratch(pb, grad_output);
    for (int64_t n = n0; n < n1; ++n) {
      const auto g = grad_output.select(0, n).view({G, Kg, pb.P * pb.Q});
      auto dx = grad_input.select(0, n);
      if (pointwise) {
        auto dx3 = dx.view({G, pb.group_in_channels(), pb.H * pb.W});
        grouped_mm(dx3, w_t, g);
        continue;
      }
      grouped_mm(scratch, w_t, g);
      AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnkit_col2im", [&] {
        col2im(scratch.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), pb);
      });
    }
  });
  return grad_input;
}

// dK = conv2d_weight_backward(G, V) for contiguous G and V.
at::Tensor weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                           const at::Tensor& input) {
  const int64_t G = pb.groups, Kg = pb.group_out_channels();
  const int64_t chunks = pb.N > 0 ? batch_chunks(pb.N) : 1;
  // One partial sum per sample range, added in range order below.
  auto partial = at::zeros({chunks, G, Kg, pb.patch_size()}, input.options());
  if (pb.N > 0 && pb.P * pb.Q > 0) {
    for_each_chunk(pb.N, chunks, [&](int64_t chunk, int64_t n0, int64_t n1) {
      auto scratch = patch_scratch(pb, input);
      auto acc = partial.select(0, chunk);
      for (int64_t n = n0; n < n1; ++n) {
        const auto g = grad_output.select(0, n).view({G, Kg, pb.P * pb.Q});
        const auto col_t = patches(pb, input, n, scratch).transpose(1, 2);
        if (G == 1) {
          acc.select(0, 0).addmm_(g.select(0, 0), col_t.select(0, 0));
        } else {
          acc.baddbmm_(g, col_t);
        }
      }
    });
  }
  auto grad_weight = partial.select(0, 0);
  for (int64_t c = 1; c < chunks; ++c) grad_weight.add_(partial.select(0, c));
  return grad_weight.view({pb.K, pb.group_in_channels(), pb.R, pb.S}).clone();
}

// ------------------------------------------------------------------ host functions

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto pb = conv2d_problem("cnnkit.conv2d", input, weight, bias, stride, padding, dilation,
                                 groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto out = forward(pb, input.contiguous(), weight.contiguous(),
                     bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : bias);
  return out.contiguous(input.suggest_memory_format());
}

at::Tensor conv2d_input_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t groups) {
  const auto pb = conv2d_input_backward_problem("cnnkit.conv2d_input_backward", grad_output,
                                                weight, input_size, stride, padding, dilation,
                                                groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto dx = input_backward(pb, grad_output.contiguous(), weight.contiguous());
  return dx.contiguous(grad_output.suggest_memory_format());
}

at::Tensor conv2d_weight_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation,
                                      int64_t groups) {
  const auto pb = conv2d_weight_backward_problem("cnnkit.conv2d_weight_backward", grad_output,
                                                 input, kernel_size, stride, padding, dilation,
                                                 groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  return weight_backward(pb, grad_output.contiguous(), input.contiguous());
}

// db[k] = sum over n, p, q of G[n, k, p, q], accumulated in double for float.
at::Tensor conv2d_bias_backward_cpu(const at::Tensor& grad_output) {
  check_conv2d_bias_backward("cnnkit.conv2d_bias_backward", grad_output);
  const auto g = grad_output.contiguous();
  const int64_t N = g.size(0), K = g.size(1), PQ = g.size(2) * g.size(3);
  auto grad_bias = at::empty({K}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cnnkit_conv2d_bias_backward", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        acc_t sum = 0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* plane = src + (n * K + k) * PQ;
          for (int64_t i = 0; i < PQ; ++i) sum += plane[i];
        }
        dst[k] = static_cast<scalar_t>(sum);
      }
    });
  });
  return grad_bias;
}

// Transposed convolution = the input gradient of the convolution whose output
// it takes, plus a bias per output channel.
at::Tensor conv_transpose2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef output_padding,
                                int64_t groups, at::IntArrayRef dilation) {
  const auto pb = conv_transpose2d_problem("cnnkit.conv_transpose2d", input, weight, bias, stride,
                                           padding, output_padding, groups, dilation);
  at::AutoDispatchBelowADInplaceOrView guard;
  auto out = input_backward(pb, input.contiguous(), weight.contiguous());
  if (bias.has_value() && out.numel() > 0) out.add_(bias->view({1, pb.C, 1, 1}));
  return out.contiguous(input.suggest_memory_format());
}

}  // namespace
}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  m.impl("conv2d", &cnnkit::cpu::conv2d_cpu);
  m.impl("conv2d_input_backward", &cnnkit::cpu::conv2d_input_backward_cpu);
  m.impl("conv2d_weight_backward", &cnnkit::cpu::conv2d_weight_backward_cpu);
  m.impl("conv2d_bias_backward", &cnnkit::cpu::conv2d_bias_backward_cpu);
  m.impl("conv_transpose2d", &cnnkit::cpu::conv_transpose2d_cpu);
}
