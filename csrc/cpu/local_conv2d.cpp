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

#include "cpu/backend.h"
#include "cpu/im2col.h"
#include "cpu/memory.h"
#include "local_ops.h"
#include "problem.h"

namespace cnnkit::cpu {
namespace {

using at::vec::Vectorized;

// Kernel rows r (columns s) of output row p (column q) that read inside the
// input: input row p*stride - pad + r*dilation in [0, H).
inline ValidRange valid_taps(int64_t extent, int64_t taps, int64_t stride, int64_t pad,
                             int64_t dilation, int64_t out_index) {
  return valid_outputs(extent, taps, dilation, pad - out_index * stride, 0);
}

// The patches of output location (p, q) in `count` samples (x points at the
// first, samples C*H*W apart), each unfolded in (c, r, s) order over all C
// channels (zero in the padding), C*R*S apart in dst. Samples innermost: each
// kernel row's source offset is worked out once for all samples (the patches
// are many short copies: 5 elements for a 5x5 kernel).
template <typename T>
void gather_patches(const T* x, int64_t count, T* dst, const Conv2dProblem& pb, int64_t p,
                    int64_t q) {
  const ValidRange rs = valid_taps(pb.H, pb.R, pb.stride_h, pb.pad_h, pb.dilation_h, p);
  const ValidRange ss = valid_taps(pb.W, pb.S, pb.stride_w, pb.pad_w, pb.dilation_w, q);
  const int64_t HW = pb.H * pb.W, RS = pb.R * pb.S, CHW = pb.C * HW, CRS = pb.C * RS;
  const bool interior = rs.lo == 0 && rs.hi == pb.R && ss.lo == 0 && ss.hi == pb.S;
  if (!interior) std::fill(dst, dst + count * CRS, T(0));
  const int64_t taps = ss.hi - ss.lo;
  // A kernel row is a few contiguous input elements: one masked vector copy.
  const bool one_vector = pb.dilation_w == 1 && taps <= Vectorized<T>::size();
  for (int64_t c = 0; c < pb.C; ++c) {
    for (int64_t r = rs.lo; r < rs.hi; ++r) {
      const T* src = x + c * HW + pb.input_row(p, r) * pb.W + pb.input_col(q, ss.lo);
      T* d = dst + c * RS + r * pb.S + ss.lo;
      for (int64_t n = 0; n < count; ++n) {
        if (one_vector) {
          Vectorized<T>::loadu(src + n * CHW, taps).store(d + n * CRS, taps);
        } else {
          gather_strided(d + n * CRS, src + n * CHW, taps, pb.dilation_w);
        }
      }
    }
  }
}

// The adjoint of gather_patches along one output row p, for one sample n and
// input channel c: adds the row's patches (location q's at
// row_patches[(q*N + n)*C*R*S]) back onto the input positions they were read
// from. Tap by tap, (r, s), across the row: one pass adds each tap of every
// location to its own input element, so no two adds of a pass touch the same
// element (patch by patch, consecutive locations' overlapping runs made each
// masked add wait for the previous one's store).
template <typename T>
void fold_row_patches(const T* row_patches, T* dxn, const Conv2dProblem& pb, int64_t p,
                      int64_t n, int64_t c) {
  const ValidRange rs = valid_taps(pb.H, pb.R, pb.stride_h, pb.pad_h, pb.dilation_h, p);
  const int64_t RS = pb.R * pb.S, step = pb.N * pb.C * RS;
  for (int64_t r = rs.lo; r < rs.hi; ++r) {
    T* drow = dxn + (c * pb.H + pb.input_row(p, r)) * pb.W;
    for (int64_t s = 0; s < pb.S; ++s) {
      const int64_t offset = s * pb.dilation_w;
      const ValidRange qs = valid_outputs(pb.W, pb.Q, pb.stride_w, pb.pad_w, offset);
      const T* src = row_patches + n * pb.C * RS + c * RS + r * pb.S + s;
      for (int64_t q = qs.lo; q < qs.hi; ++q) drow[pb.input_col(q, s)] += src[q * step];
    }
  }
}

// out[i] = a_i . w for up to four rows a_i of length len (one weight row
// loaded once for four samples).
template <typename T>
void dot_rows(const T* w, const T* const* a, int count, int64_t len, T* out) {
  using Vec = Vectorized<T>;
  if (count == 1) {
    // One sample: four partial sums over interleaved vectors, so that the
    // multiply-adds do not wait on one another (one chain ran at one vector
    // per four cycles, slower than the weights stream in).
    Vec part[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};
    int64_t j = 0;
    for (; j + 4 * Vec::size() <= len; j += 4 * Vec::size()) {
      for (int v = 0; v < 4; ++v) {
        part[v] = at::vec::fmadd(Vec::loadu(w + j + v * Vec::size()),
                                 Vec::loadu(a[0] + j + v * Vec::size()), part[v]);
      }
    }
    for (; j + Vec::size() <= len; j += Vec::size()) {
      part[0] = at::vec::fmadd(Vec::loadu(w + j), Vec::loadu(a[0] + j), part[0]);
    }
    const Vec total = (part[0] + part[1]) + (part[2] + part[3]);
    T sum = at::vec::vec_reduce_all<T>([](Vec& u, Vec& v) { return u + v; }, total);
    for (; j < len; ++j) sum += w[j] * a[0][j];
    out[0] = sum;
    return;
  }
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

// out[j] = sum_i coef[i] * rows[i * row_stride + j] for j < len: a linear
// combination of `count` rows, accumulated in registers over blocks of four
// vectors so that `out` is written once.
template <typename T>
void combine_rows(T* out, const T* rows, int64_t row_stride, const T* coef, int64_t count,
                  int64_t len) {
  using Vec = Vectorized<T>;
  constexpr int64_t kBlock = 4 * Vec::size();
  int64_t j = 0;
  for (; j + kBlock <= len; j += kBlock) {
    Vec acc[4] = {Vec(T(0)), Vec(T(0)), Vec(T(0)), Vec(T(0))};
    for (int64_t i = 0; i < count; ++i) {
      const Vec c(coef[i]);
      const T* row = rows + i * row_stride + j;
      for (int v = 0; v < 4; ++v) {
        acc[v] = at::vec::fmadd(c, Vec::loadu(row + v * Vec::size()), acc[v]);
      }
    }
    for (int v = 0; v < 4; ++v) acc[v].store(out + j + v * Vec::size());
  }
  for (; j + Vec::size() <= len; j += Vec::size()) {
    Vec acc(T(0));
    for (int64_t i = 0; i < count; ++i) {
      acc = at::vec::fmadd(Vec(coef[i]), Vec::loadu(rows + i * row_stride + j), acc);
    }
    acc.store(out + j);
  }
  for (; j < len; ++j) {
    T sum = 0;
    for (int64_t i = 0; i < count; ++i) sum += coef[i] * rows[i * row_stride + j];
    out[j] = sum;
  }
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
  at::parallel_for(0, PQ, grain_for(pb.N * pb.K * CgRS), [&](int64_t l0, int64_t l1) {
    std::vector<T> patches(pb.N * CRS), results(pb.N * pb.K);
    for (int64_t l = l0; l < l1; ++l) {
      gather_patches(x, pb.N, patches.data(), pb, l / pb.Q, l % pb.Q);
      // Each weight row W_l[k] is streamed against the patches of four samples
      // at a time (from L1 after the first four: W_l is a few tens of KiB),
      // with the dot products kept in vector registers. (Transposing W_l so
      // that outputs accumulate without horizontal sums was 1.5-3x slower at
      // every batch of the DeepFace layers: the transpose costs more than it saves.)
      for (int64_t k = 0; k < pb.K; ++k) {
        const T* wk = weight_row(w, pb, k, l);
        const int64_t g = k / Kg;
        for (int64_t n = 0; n < pb.N; n += 4) {
          const int count = static_cast<int>(std::min<int64_t>(4, pb.N - n));
          const T* rows[4];
          for (int i = 0; i < count; ++i) rows[i] = patches.data() + (n + i) * CRS + g * CgRS;
          T sums[4];
          dot_rows(wk, rows, count, CgRS, sums);
          for (int i = 0; i < count; ++i) results[(n + i) * pb.K + k] = sums[i];
        }
      }
      for (int64_t n = 0; n < pb.N; ++n) {
        for (int64_t k = 0; k < pb.K; ++k) {
          out[(n * pb.K + k) * PQ + l] = results[n * pb.K + k] + (bias ? bias[k * PQ + l] : T(0));
        }
      }
    }
  });
}

// dW_l[k] = sum_n G[n, k, l] X_l[n], each weight row written once.
template <typename T>
void weight_backward_kernel(const Conv2dProblem& pb, const T* grad_out, const T* x, T* grad_w) {
  const int64_t PQ = pb.P * pb.Q, CgRS = pb.patch_size(), CRS = pb.C * pb.R * pb.S;
  const int64_t Kg = pb.group_out_channels();
  at::parallel_for(0, PQ, grain_for(pb.N * pb.K * CgRS), [&](int64_t l0, int64_t l1) {
    std::vector<T> patches(pb.N * CRS), coef(pb.N);
    for (int64_t l = l0; l < l1; ++l) {
      gather_patches(x, pb.N, patches.data(), pb, l / pb.Q, l % pb.Q);
      for (int64_t k = 0; k < pb.K; ++k) {
        for (int64_t n = 0; n < pb.N; ++n) coef[n] = grad_out[(n * pb.K + k) * PQ + l];
        combine_rows(grad_w + (k * PQ + l) * CgRS, patches.data() + (k / Kg) * CgRS, CRS,
                     coef.data(), pb.N, CgRS);
      }
    }
  });
}

// dV: one output row at a time. Phase 1 (parallel over the row's locations):
// dX_l[n] = sum_k G[n, k, l] W_l[k]. Phase 2 (parallel over input planes): fold
// the row's dX_l back onto the input positions they were read from.
template <typename T>
void input_backward_kernel(const Conv2dProblem& pb, const T* grad_out, const T* w, T* grad_in) {
  const int64_t PQ = pb.P * pb.Q, CgRS = pb.patch_size(), CRS = pb.C * pb.R * pb.S;
  const int64_t Kg = pb.group_out_channels(), HW = pb.H * pb.W;
  std::fill(grad_in, grad_in + pb.N * pb.C * HW, T(0));
  // The row's patches, from ATen's allocator (not std::vector) so that memory
  // accounting such as the profiler's sees this, the kernel's largest scratch.
  const auto row_patches_buffer =
      at::empty({pb.Q * pb.N * CRS}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  T* const row_patches_data = row_patches_buffer.template mutable_data_ptr<T>();
  for (int64_t p = 0; p < pb.P; ++p) {
    at::parallel_for(0, pb.Q, grain_for(pb.N * pb.K * CgRS), [&](int64_t q0, int64_t q1) {
      std::vector<T> coef(Kg);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t l = p * pb.Q + q;
        for (int64_t n = 0; n < pb.N; ++n) {
          for (int64_t g = 0; g < pb.groups; ++g) {
            for (int64_t i = 0; i < Kg; ++i) coef[i] = grad_out[(n * pb.K + g * Kg + i) * PQ + l];
            combine_rows(row_patches_data + (q * pb.N + n) * CRS + g * CgRS,
                         weight_row(w, pb, g * Kg, l), PQ * CgRS, coef.data(), Kg, CgRS);
          }
        }
      }
    });
    at::parallel_for(0, pb.N * pb.C, grain_for(pb.Q * pb.R * pb.S), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t n = i / pb.C, c = i % pb.C;
        fold_row_patches(row_patches_data, grad_in + n * pb.C * HW, pb, p, n, c);
      }
    });
  }
}

// ------------------------------------------------------------------ backend

// The CPU backend of the ops in csrc/local_ops.h.
struct LocalBackend {
  using DeviceScope = cpu::DeviceScope;

  static constexpr auto empty_large = &cpu::empty_large;

  static void local_forward(const Conv2dProblem& pb, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, at::Tensor& out) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit_local_conv2d", [&] {
      forward_kernel<scalar_t>(pb, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                               b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                               out.mutable_data_ptr<scalar_t>());
    });
  }

  static void local_input_backward(const Conv2dProblem& pb, const at::Tensor& g,
                                   const at::Tensor& w, at::Tensor& grad_input) {
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "cnnkit_local_conv2d_input_backward", [&] {
      input_backward_kernel<scalar_t>(pb, g.const_data_ptr<scalar_t>(),
                                      w.const_data_ptr<scalar_t>(),
                                      grad_input.mutable_data_ptr<scalar_t>());
    });
  }

  static void local_weight_backward(const Conv2dProblem& pb, const at::Tensor& g,
                                    const at::Tensor& x, at::Tensor& grad_weight) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "cnnkit_local_conv2d_weight_backward", [&] {
      weight_backward_kernel<scalar_t>(pb, g.const_data_ptr<scalar_t>(),
                                       x.const_data_ptr<scalar_t>(),
                                       grad_weight.mutable_data_ptr<scalar_t>());
    });
  }

  // db[u] = sum_n G[n, u] over the units u = (k, p, q), accumulated in double for float.
  static void local_bias_backward(const at::Tensor& g, at::Tensor& grad_bias) {
    const int64_t N = g.size(0), KPQ = grad_bias.numel();
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
  }
};

}  // namespace
}  // namespace cnnkit::cpu

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  CNNKIT_REGISTER_LOCAL_CONV2D_OPS(m, cnnkit::cpu::LocalBackend);
}
