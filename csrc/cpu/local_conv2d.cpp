// Unshared (locally connected) convolution on the CPU, SPEC 1.3.
//
// Every output location l = (p, q) has its own weights W_l = W[:, p, q]
// (K x C/g*R*S per group), so the convolution is one small matrix product per
// location between the patches of that location for the whole batch,
// X_l (N x C*R*S, one row per sample), and W_l:
//
//     forward          Z[n, k, l] = b[k, l] + X_l[n] . W_l[k]
//     weight gradient  dW_l[k]    = sum_n G[n, k, l] X_l[n]
//     input gradient   dX_l[n]    = sum_k G[n, k, l] W_l[k]   folded back into dV
//
// Weights are read once per call (each location's W_l once, reused from
// cache for every sample); beyond inputs, outputs and weights a call holds the
// patches of one location per thread (forward, weight gradient) or of one row
// of output locations (input gradient), never the unfolded input of the whole
// batch. The input gradient folds one output row back at a time, each input
// plane by one task, so no two tasks write one element and the order of the
// sums is fixed.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

#include "cpu/im2col.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

using at::vec::Vectorized;

// X_l: the patches of output location (p, q) for every sample, row n =
// V[n] unfolded in (c, r, s) order over all C channels (zero in the padding).
template <typename T>
void gather_patches(const T* x, T* patches, const Conv2dProblem& pb, int64_t p, int64_t q) {
  const int64_t CRS = pb.C * pb.R * pb.S, HW = pb.H * pb.W;
  for (int64_t n = 0; n < pb.N; ++n) {
    T* dst = patches + n * CRS;
    for (int64_t c = 0; c < pb.C; ++c) {
      const T* plane = x + (n * pb.C + c) * HW;
      for (int64_t r = 0; r < pb.R; ++r) {
        const int64_t ih = pb.input_row(p, r);
        const bool row_in = ih >= 0 && ih < pb.H;
        for (int64_t s = 0; s < pb.S; ++s, ++dst) {
          const int64_t iw = pb.input_col(q, s);
          *dst = (row_in && iw >= 0 && iw < pb.W) ? plane[ih * pb.W + iw] : T(0);
        }
      }
    }
  }
}

// out[i] = a_i . w for up to four rows a_i of length len (one weight row
// loaded once for four samples).
template <typename T>
void dot_rows(const T* w, const T* const* a, int count, int64_t len, T* out) {
  using Vec = Vectorized<T>;
  Vec acc[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};
  int64_t j = 0;
  for (; j + Vec::size() <= len; j += Vec::size()) {
    const Vec wv = Vec::loadu(w + j);
    for (int i = 0; i < count; ++i) acc[i] = at::vec::fmadd(wv, Vec::loadu(a[i] + j), acc[i]);
  }
  for (int i = 0; i < count; ++i) {
    T sum = at::vec::vec_reduce_all<T>([](Vec& u, Vec& v) { return u + v; }, acc[i]);
    for (int64_t t = j; t < len; ++t) sum += w[t] * a[i][t];
    out[i] = sum;
  }
}

// y += alpha * x over len elements.
template <typename T>
inline void axpy(T alpha, const T* x, T* y, int64_t len) {
  using Vec = Vectorized<T>;
  const Vec av(alpha);
  int64_t j = 0;
  for (; j + Vec::size() <= len; j += Vec::size()) {
    at::vec::fmadd(av, Vec::loadu(x + j), Vec::loadu(y + j)).store(y + j);
  }
  for (; j < len; ++j) y[j] += alpha * x[j];
}

// Pointer to W_l[k] = W[k, p, q, :, :, :] (length C/g*R*S).
template <typename T>
inline const T* weight_row(const T* w, const Conv2dProblem& pb, int64_t k, int64_t l) {
  return w + (k * pb.P * pb.Q + l) * pb.patch_size();
}

template <typename T>
void forward_kernel(const Conv2dProblem& pb, const T* x, const T* w, const T* bias, T* out) {
  const int64_t PQ = pb.P * pb.Q, CgRS = pb.patch_size(), CRS = pb.C * pb.R * pb.S;
  const int64_t Kg = pb.group_out_channels();
  at::parallel_for(0, PQ, 1, [&](int64_t l0, int64_t l1) {
    std::vector<T> patches(pb.N * CRS);
    for (int64_t l = l0; l < l1; ++l) {
      gather_patches(x, patches.data(), pb, l / pb.Q, l % pb.Q);
      for (int64_t k = 0; k < pb.K; ++k) {
        const T* wk = weight_row(w, pb, k, l);
        const int64_t g = k / Kg;
        const T b = bias ? bias[k * PQ + l] : T(0);
        for (int64_t n = 0; n < pb.N; n += 4) {
          const int count = static_cast<int>(std::min<int64_t>(4, pb.N - n));
          const T* rows[4];
          for (int i = 0; i < count; ++i) rows[i] = patches.data() + (n + i) * CRS + g * CgRS;
          T sums[4];
          dot_rows(wk, rows, count, CgRS, sums);
          for (int i = 0; i < count; ++i) out[((n + i) * pb.K + k) * PQ + l] = sums[i] + b;
        }
      }
    }
  });
}

template <typename T>
void weight_backward_kernel(const Conv2dProblem& pb, const T* grad_out, const T* x, T* grad_w) {
  const int64_t PQ = pb.P * pb.Q, CgRS = pb.patch_size(), CRS = pb.C * pb.R * pb.S;
  const int64_t Kg = pb.group_out_channels();
  at::parallel_for(0, PQ, 1, [&](int64_t l0, int64_t l1) {
    std::vector<T> patches(pb.N * CRS);
    for (int64_t l = l0; l < l1; ++l) {
      gather_patches(x, patches.data(), pb, l / pb.Q, l % pb.Q);
      for (int64_t k = 0; k < pb.K; ++k) {
        T* dwk = grad_w + (k * PQ + l) * CgRS;
        std::fill(dwk, dwk + CgRS, T(0));
        const T* group_patches = patches.data() + (k / Kg) * CgRS;
        for (int64_t n = 0; n < pb.N; ++n) {
          axpy(grad_out[(n * pb.K + k) * PQ + l], group_patches + n * CRS, dwk, CgRS);
        }
      }
    }
  });
}

// dV: one output row at a time. Phase 1 (parallel over locations of the row):
// dX_l = sum_k G[:, k, l] W_l[k]. Phase 2 (parallel over input planes): fold
// the row's dX_l back onto the input positions they were read from.
template <typename T>
void input_backward_kernel(const Conv2dProblem& pb, const T* grad_out, const T* w, T* grad_in) {
  const int64_t PQ = pb.P * pb.Q, CgRS = pb.patch_size(), CRS = pb.C * pb.R * pb.S;
  const int64_t Kg = pb.group_out_channels(), HW = pb.H * pb.W, RS = pb.R * pb.S;
  std::fill(grad_in, grad_in + pb.N * pb.C * HW, T(0));
  std::vector<T> row_patches(pb.Q * pb.N * CRS);
  for (int64_t p = 0; p < pb.P; ++p) {
    at::parallel_for(0, pb.Q, 1, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t l = p * pb.Q + q;
        T* dx = row_patches.data() + q * pb.N * CRS;
        std::fill(dx, dx + pb.N * CRS, T(0));
        for (int64_t n = 0; n < pb.N; ++n) {
          for (int64_t k = 0; k < pb.K; ++k) {
            axpy(grad_out[(n * pb.K + k) * PQ + l], weight_row(w, pb, k, l),
                 dx + n * CRS + (k / Kg) * CgRS, CgRS);
          }
        }
      }
    });
    at::parallel_for(0, pb.N * pb.C, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = i / pb.C, c = i % pb.C;
        T* plane = grad_in + i * HW;
        for (int64_t q = 0; q < pb.Q; ++q) {
          const T* src = row_patches.data() + (q * pb.N + n) * CRS + c * RS;
          for (int64_t r = 0; r < pb.R; ++r) {
            const int64_t ih = pb.input_row(p, r);
            if (ih < 0 || ih >= pb.H) continue;
            for (int64_t s = 0; s < pb.S; ++s) {
              const int64_t iw = pb.input_col(q, s);
              if (iw >= 0 && iw < pb.W) plane[ih * pb.W + iw] += src[r * pb.S + s];
            }
          }
        }
      }
    });
  }
}

// ------------------------------------------------------------------ host functions

at::Tensor local_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const auto pb = local_conv2d_problem("cnnkit.local_conv2d", input, weight, bias, stride, padding,
                                       dilation, groups);
  const auto x = input.contiguous(), w = weight.contiguous();
  const auto b = bias.has_value() ? bias->contiguous() : at::Tensor();
  auto out = at::empty({pb.N, pb.K, pb.P, pb.Q}, x.options());
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit_local_conv2d", [&] {
      forward_kernel<scalar_t>(pb, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                               b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                               out.mutable_data_ptr<scalar_t>());
    });
  }
  return out.contiguous(input.suggest_memory_format());
}

at::Tensor local_conv2d_input_backward_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           at::IntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           int64_t groups) {
  const auto pb = local_conv2d_input_backward_problem("cnnkit.local_conv2d_input_backward",
                                                      grad_output, weight, input_size, stride,
                                                      padding, dilation, groups);
  const auto g = grad_output.contiguous(), w = weight.contiguous();
  auto grad_input = at::empty({pb.N, pb.C, pb.H, pb.W}, g.options());
  if (grad_input.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cnnkit_local_conv2d_input_backward", [&] {
      input_backward_kernel<scalar_t>(pb, g.const_data_ptr<scalar_t>(),
                                      w.const_data_ptr<scalar_t>(),
                                      grad_input.mutable_data_ptr<scalar_t>());
    });
  }
  return grad_input.contiguous(grad_output.suggest_memory_format());
}

at::Tensor local_conv2d_weight_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                            at::IntArrayRef padding, at::IntArrayRef dilation,
                                            int64_t groups) {
  const auto pb = local_conv2d_weight_backward_problem("cnnkit.local_conv2d_weight_backward",
                                                       grad_output, input, kernel_size, stride,
                                                       padding, dilation, groups);
  const auto g = grad_output.contiguous(), x = input.contiguous();
  auto grad_weight = at::zeros({pb.K, pb.P, pb.Q, pb.group_in_channels(), pb.R, pb.S}, x.options());
  if (pb.N > 0 && grad_weight.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit_local_conv2d_weight_backward", [&] {
      weight_backward_kernel<scalar_t>(pb, g.const_data_ptr<scalar_t>(),
                                       x.const_data_ptr<scalar_t>(),
                                       grad_weight.mutable_data_ptr<scalar_t>());
    });
  }
  return grad_weight;
}

// db[k, p, q] = sum_n G[n, k, p, q], accumulated in double for float.
at::Tensor local_conv2d_bias_backward_cpu(const at::Tensor& grad_output) {
  check_conv2d_bias_backward("cnnkit.local_conv2d_bias_backward", grad_output);
  const auto g = grad_output.contiguous();
  const int64_t N = g.size(0), KPQ = g.size(1) * g.size(2) * g.size(3);
  auto grad_bias = at::empty({g.size(1), g.size(2), g.size(3)}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cnnkit_local_conv2d_bias_backward", [&] {
    using acc_t = at::acc_type<scalar_t, /*is_cuda=*/false>;
    const scalar_t* src = g.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_bias.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, KPQ, 1024, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        acc_t sum = 0;
        for (int64_t n = 0; n < N; ++n) sum += src[n * KPQ + i];
        dst[i] = static_cast<scalar_t>(sum);
      }
    });
  });
  return grad_bias;
}

}  // namespace
}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  m.impl("local_conv2d", &cnnkit::cpu::local_conv2d_cpu);
  m.impl("local_conv2d_input_backward", &cnnkit::cpu::local_conv2d_input_backward_cpu);
  m.impl("local_conv2d_weight_backward", &cnnkit::cpu::local_conv2d_weight_backward_cpu);
  m.impl("local_conv2d_bias_backward", &cnnkit::cpu::local_conv2d_bias_backward_cpu);
}
