// Convolution on the CPU: forward, input gradient (= transposed convolution),
// weight gradient and bias gradient; the engine of conv2d.h, which serves tiled
// convolution too (one dense convolution per tile phase).
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

#include <vector>

#include "cpu/conv2d.h"
#include "cpu/im2col.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

bool is_pointwise(const Conv2dProblem& pb) {
  return pb.R == 1 && pb.S == 1 && pb.stride_h == 1 && pb.stride_w == 1 && pb.pad_h == 0 &&
         pb.pad_w == 0 && pb.P == pb.H && pb.Q == pb.W;
}

int64_t phase_count(const Conv2dProblem& pb) { return pb.tile_h * pb.tile_w; }

// The dense convolution computing the output locations of tile phase `phase`
// = (a, b): rows p = a + i*tH read input rows (a + i*tH)*s - pad + r*d
// = i*(s*tH) - (pad - a*s) + r*d. The shifted padding may be negative.
Conv2dProblem phase_problem(const Conv2dProblem& pb, int64_t phase) {
  const int64_t a = phase / pb.tile_w, b = phase % pb.tile_w;
  Conv2dProblem sub = pb;
  sub.P = a < pb.P ? ceil_div(pb.P - a, pb.tile_h) : 0;
  sub.Q = b < pb.Q ? ceil_div(pb.Q - b, pb.tile_w) : 0;
  sub.stride_h = pb.stride_h * pb.tile_h;
  sub.stride_w = pb.stride_w * pb.tile_w;
  sub.pad_h = pb.pad_h - a * pb.stride_h;
  sub.pad_w = pb.pad_w - b * pb.stride_w;
  sub.tile_h = sub.tile_w = 1;
  return sub;
}

// The locations of `phase` in a tensor (..., P, Q): rows a::tH, columns b::tW.
at::Tensor phase_locations(const at::Tensor& t, const Conv2dProblem& pb, int64_t phase) {
  const int64_t a = phase / pb.tile_w, b = phase % pb.tile_w;
  return t.slice(-2, a, pb.P, pb.tile_h).slice(-1, b, pb.Q, pb.tile_w);
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

// Scratch for one patch matrix of the largest phase (phase 0), or none when
// the input itself is the patch matrix.
at::Tensor patch_scratch(const Conv2dProblem& pb, const at::Tensor& like) {
  const auto sub = phase_problem(pb, 0);
  if (is_pointwise(sub)) return at::Tensor();
  return at::empty({pb.groups * pb.patch_size() * sub.P * sub.Q}, like.options());
}

// A (G, C/G*R*S, P*Q) patch matrix for sub-problem `sub` in the scratch.
at::Tensor scratch_matrix(const Conv2dProblem& sub, at::Tensor& scratch) {
  const int64_t rows = sub.patch_size(), cols = sub.P * sub.Q;
  return scratch.narrow(0, 0, sub.groups * rows * cols).view({sub.groups, rows, cols});
}

// The patch matrix of sample n for sub-problem `sub`, (G, C/G*R*S, P*Q): the
// input itself for a pointwise convolution, else unfolded into `scratch`.
at::Tensor patches(const Conv2dProblem& sub, const at::Tensor& input, int64_t n,
                   at::Tensor& scratch) {
  const auto sample = input.select(0, n);
  if (is_pointwise(sub)) return sample.view({sub.groups, sub.group_in_channels(), sub.H * sub.W});
  auto col = scratch_matrix(sub, scratch);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "cnnkit_im2col", [&] {
    im2col(sample.const_data_ptr<scalar_t>(), col.mutable_data_ptr<scalar_t>(), sub);
  });
  return col;
}

}  // namespace

at::Tensor conv_forward(const Conv2dProblem& pb, const at::Tensor& input,
                        const at::Tensor& weight_phases, const at::Tensor& bias_phases) {
  auto output = at::empty({pb.N, pb.K, pb.P, pb.Q}, input.options());
  if (output.numel() == 0) return output;
  const int64_t G = pb.groups, Kg = pb.group_out_channels(), T = phase_count(pb);
  for_each_chunk(pb.N, batch_chunks(pb.N), [&](int64_t, int64_t n0, int64_t n1) {
    auto scratch = patch_scratch(pb, input);
    for (int64_t n = n0; n < n1; ++n) {
      auto out_n = output.select(0, n);
      for (int64_t ph = 0; ph < T; ++ph) {
        const auto sub = phase_problem(pb, ph);
        if (sub.P == 0 || sub.Q == 0) continue;
        // One phase writes its GEMM straight into the output; several go
        // through a phase-ordered block that is then spread over the locations.
        auto out = T == 1 ? out_n.view({G, Kg, pb.P * pb.Q})
                          : at::empty({G, Kg, sub.P * sub.Q}, input.options());
        grouped_mm(out, weight_phases.select(0, ph), patches(sub, input, n, scratch));
        if (bias_phases.defined()) out.add_(bias_phases.select(0, ph).view({G, Kg, 1}));
        if (T > 1) phase_locations(out_n, pb, ph).copy_(out.view({pb.K, sub.P, sub.Q}));
      }
    }
  });
  return output;
}

at::Tensor conv_input_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                               const at::Tensor& weight_phases) {
  auto grad_input = at::empty({pb.N, pb.C, pb.H, pb.W}, grad_output.options());
  if (grad_input.numel() == 0) return grad_input;
  const int64_t G = pb.groups, Kg = pb.group_out_channels(), T = phase_count(pb);
  const auto w_t = weight_phases.transpose(2, 3);  // (T, G, C/G*R*S, K/G)
  if (pb.P * pb.Q == 0) return grad_input.zero_();
  for_each_chunk(pb.N, batch_chunks(pb.N), [&](int64_t, int64_t n0, int64_t n1) {
    auto scratch = patch_scratch(pb, grad_output);
    for (int64_t n = n0; n < n1; ++n) {
      const auto g_n = grad_output.select(0, n);
      auto dx = grad_input.select(0, n);
      for (int64_t ph = 0; ph < T; ++ph) {
        const auto sub = phase_problem(pb, ph);
        if (sub.P == 0 || sub.Q == 0) continue;
        const auto g = (T == 1 ? g_n : phase_locations(g_n, pb, ph).contiguous())
                           .view({G, Kg, sub.P * sub.Q});
        if (is_pointwise(sub)) {  // then T == 1: the product is the gradient itself
          auto dx3 = dx.view({G, pb.group_in_channels(), pb.H * pb.W});
          grouped_mm(dx3, w_t.select(0, ph), g);
          continue;
        }
        auto col = scratch_matrix(sub, scratch);
        grouped_mm(col, w_t.select(0, ph), g);
        AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "cnnkit_col2im", [&] {
          col2im(col.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), sub,
                 /*accumulate=*/ph > 0);
        });
      }
    }
  });
  return grad_input;
}

at::Tensor conv_weight_backward(const Conv2dProblem& pb, const at::Tensor& grad_output,
                                const at::Tensor& input) {
  const int64_t G = pb.groups, Kg = pb.group_out_channels(), T = phase_count(pb);
  const int64_t chunks = pb.N > 0 ? batch_chunks(pb.N) : 1;
  // One partial sum per sample range, added in range order below.
  auto partial = at::zeros({chunks, T, G, Kg, pb.patch_size()}, input.options());
  if (pb.N > 0 && pb.P * pb.Q > 0) {
    for_each_chunk(pb.N, chunks, [&](int64_t chunk, int64_t n0, int64_t n1) {
      auto scratch = patch_scratch(pb, input);
      for (int64_t n = n0; n < n1; ++n) {
        const auto g_n = grad_output.select(0, n);
        for (int64_t ph = 0; ph < T; ++ph) {
          const auto sub = phase_problem(pb, ph);
          if (sub.P == 0 || sub.Q == 0) continue;
          const auto g = (T == 1 ? g_n : phase_locations(g_n, pb, ph).contiguous())
                             .view({G, Kg, sub.P * sub.Q});
          const auto col_t = patches(sub, input, n, scratch).transpose(1, 2);
          auto acc = partial.select(0, chunk).select(0, ph);
          if (G == 1) {
            acc.select(0, 0).addmm_(g.select(0, 0), col_t.select(0, 0));
          } else {
            acc.baddbmm_(g, col_t);
          }
        }
      }
    });
  }
  auto grad_weight = partial.select(0, 0);
  for (int64_t c = 1; c < chunks; ++c) grad_weight.add_(partial.select(0, c));
  return chunks == 1 ? grad_weight : grad_weight.clone();
}

at::Tensor conv_bias_backward(const at::Tensor& grad_output, int64_t tile_h, int64_t tile_w) {
  const auto g = grad_output.contiguous();
  const int64_t N = g.size(0), K = g.size(1), P = g.size(2), Q = g.size(3);
  auto grad_bias = at::empty({K, tile_h, tile_w}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cnnkit_conv_bias_backward", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, K, 1, [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> sums(tile_h * tile_w);
      for (int64_t k = k0; k < k1; ++k) {
        std::fill(sums.begin(), sums.end(), acc_t(0));
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t* plane = src + (n * K + k) * P * Q;
          for (int64_t p = 0; p < P; ++p) {
            acc_t* row_sums = sums.data() + (p % tile_h) * tile_w;
            for (int64_t q = 0; q < Q; ++q) row_sums[q % tile_w] += plane[p * Q + q];
          }
        }
        for (int64_t t = 0; t < tile_h * tile_w; ++t) {
          dst[k * tile_h * tile_w + t] = static_cast<scalar_t>(sums[t]);
        }
      }
    });
  });
  return grad_bias;
}

namespace {

// ------------------------------------------------------------------ host functions

// A dense weight (K, C/G, R, S) is the one-phase weight (1, G, K/G, C/G*R*S).
at::Tensor dense_phases(const Conv2dProblem& pb, const at::Tensor& weight) {
  return weight.contiguous().view({1, pb.groups, pb.group_out_channels(), pb.patch_size()});
}

at::Tensor conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto pb = conv2d_problem("cnnkit.conv2d", input, weight, bias, stride, padding, dilation,
                                 groups);
  at::AutoDispatchBelowADInplaceOrView guard;
  const auto b = bias.has_value() ? bias->contiguous().view({1, pb.K}) : at::Tensor();
  auto out = conv_forward(pb, input.contiguous(), dense_phases(pb, weight), b);
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
  auto dx = conv_input_backward(pb, grad_output.contiguous(), dense_phases(pb, weight));
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
  return conv_weight_backward(pb, grad_output.contiguous(), input.contiguous())
      .view({pb.K, pb.group_in_channels(), pb.R, pb.S});
}

// db[k] = sum over n, p, q of G[n, k, p, q].
at::Tensor conv2d_bias_backward_cpu(const at::Tensor& grad_output) {
  check_conv2d_bias_backward("cnnkit.conv2d_bias_backward", grad_output);
  return conv_bias_backward(grad_output, 1, 1).view({grad_output.size(1)});
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
  auto out = conv_input_backward(pb, input.contiguous(), dense_phases(pb, weight));
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
