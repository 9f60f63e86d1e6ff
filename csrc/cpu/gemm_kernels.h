// The matrix product's loops, written once for every instruction set: each
// gemm_<isa>.cpp includes this file inside its own anonymous namespace, after
// switching the compiler to its instruction set, with a `Vec` type naming the
// vector registers (width, zero, load, store, broadcast, fma).
//
// The method is that of BLIS (Van Zee and van de Geijn, "BLIS: A Framework
// for Rapidly Instantiating BLAS Functionality", 2015):
//
//   for each column panel jc of C (nc columns):
//     for each depth block pc (kc):
//       pack B[pc, jc] into slivers of nr columns, each stored k-major
//       for each row block ic of C (mc rows):
//         pack A[ic, pc] into slivers of mr rows, each stored k-major
//         for each sliver pair: C[mr x nr] (+)= A sliver @ B sliver
//
// The micro-kernel holds the mr x nr tile of C in registers for the whole
// depth: per k it loads nr/width vectors of B and broadcasts mr values of A,
// mr*nr/width fused multiply-adds. Packing pads slivers with zeros past the
// matrix edge, so the micro-kernel always runs full tiles; an edge tile is
// computed into a buffer and only its valid part is written. Each element of
// C is one sum over k in increasing order, blocks of kc after one another:
// the result does not depend on how the caller splits C over threads.
//
// Nothing from the standard library is used here: this code is compiled for
// a wider instruction set than the rest of the extension and must not emit
// inline functions the linker could share with baseline code.

template <typename T>
inline int64_t min_of(int64_t a, int64_t b) {
  return a < b ? a : b;
}

// dst: slivers of MR rows of the m x kc block at a, each kc x MR (k-major).
template <typename T, int MR>
void pack_a(int64_t m, int64_t kc, const T* a, int64_t rs, int64_t cs, T* dst) {
  for (int64_t i0 = 0; i0 < m; i0 += MR) {
    const int64_t rows = min_of<T>(MR, m - i0);
    const T* src = a + i0 * rs;
    if (rows == MR && rs == 1) {  // columns contiguous (a transposed matrix)
      for (int64_t k = 0; k < kc; ++k) {
        for (int i = 0; i < MR; ++i) dst[k * MR + i] = src[k * cs + i];
      }
    } else if (rows == MR && cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        for (int i = 0; i < MR; ++i) dst[k * MR + i] = src[i * rs + k];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int i = 0; i < MR; ++i) dst[k * MR + i] = i < rows ? src[i * rs + k * cs] : T(0);
      }
    }
    dst += kc * MR;
  }
}

// dst: slivers of NR columns of the kc x n block at b, each kc x NR (k-major).
template <typename T, int NR>
void pack_b(int64_t kc, int64_t n, const T* b, int64_t rs, int64_t cs, T* dst) {
  for (int64_t j0 = 0; j0 < n; j0 += NR) {
    const int64_t cols = min_of<T>(NR, n - j0);
    const T* src = b + j0 * cs;
    if (cols == NR && cs == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        for (int j = 0; j < NR; ++j) dst[k * NR + j] = src[k * rs + j];
      }
    } else if (rs == 1) {  // columns contiguous: read each column once
      for (int j = 0; j < NR; ++j) {
        if (j < cols) {
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[j * cs + k];
        } else {
          for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = T(0);
        }
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        for (int j = 0; j < NR; ++j) dst[k * NR + j] = j < cols ? src[k * rs + j * cs] : T(0);
      }
    }
    dst += kc * NR;
  }
}

// c[MR x NV*width] (+)= a sliver @ b sliver over kc, c with row stride ldc.
template <typename Vec, int MR, int NV>
inline void micro_kernel(int64_t kc, const typename Vec::T* __restrict a,
                         const typename Vec::T* __restrict b, typename Vec::T* c, int64_t ldc,
                         bool accumulate) {
  using V = typename Vec::V;
  constexpr int W = Vec::width, NR = NV * W;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = Vec::zero();
  }
  for (int64_t k = 0; k < kc; ++k) {
    V bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = Vec::load(b + j * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const V ai = Vec::broadcast(a + i);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = Vec::fma(ai, bv[j], acc[i][j]);
    }
    a += MR;
    b += NR;
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      typename Vec::T* dst = c + i * ldc + j * W;
      Vec::store(dst, accumulate ? Vec::add(Vec::load(dst), acc[i][j]) : acc[i][j]);
    }
  }
}

template <typename Vec, int MR, int NV>
void gemm_single_thread(const cnnkit::cpu::gemm_detail::GemmArgs<typename Vec::T>& p,
                        const cnnkit::cpu::gemm_detail::Blocking& blk, typename Vec::T* packed_a,
                        typename Vec::T* packed_b) {
  using T = typename Vec::T;
  constexpr int NR = NV * Vec::width;
  alignas(64) T edge[MR * NR];
  for (int64_t jc = 0; jc < p.N; jc += blk.nc) {
    const int64_t nc = min_of<T>(blk.nc, p.N - jc);
    for (int64_t pc = 0; pc < p.K; pc += blk.kc) {
      const int64_t kc = min_of<T>(blk.kc, p.K - pc);
      const bool accumulate = p.accumulate || pc > 0;
      pack_b<T, NR>(kc, nc, p.b + pc * p.b_rs + jc * p.b_cs, p.b_rs, p.b_cs, packed_b);
      for (int64_t ic = 0; ic < p.M; ic += blk.mc) {
        const int64_t mc = min_of<T>(blk.mc, p.M - ic);
        pack_a<T, MR>(mc, kc, p.a + ic * p.a_rs + pc * p.a_cs, p.a_rs, p.a_cs, packed_a);
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int64_t n = min_of<T>(NR, nc - jr);
          const T* b_sliver = packed_b + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int64_t m = min_of<T>(MR, mc - ir);
            const T* a_sliver = packed_a + ir * kc;
            T* c = p.c + (ic + ir) * p.c_rs + jc + jr;
            if (m == MR && n == NR) {
              micro_kernel<Vec, MR, NV>(kc, a_sliver, b_sliver, c, p.c_rs, accumulate);
              continue;
            }
            micro_kernel<Vec, MR, NV>(kc, a_sliver, b_sliver, edge, NR, false);
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t j = 0; j < n; ++j) {
                c[i * p.c_rs + j] = accumulate ? c[i * p.c_rs + j] + edge[i * NR + j] : edge[i * NR + j];
              }
            }
          }
        }
      }
    }
  }
}

// The exported kernel of one element type: Vec's micro-kernel of MR x NV
// vectors with cache blocks KC, MC, NC.
#define CNNKIT_GEMM_KERNEL(NAME, VEC, MR, NV, KC, MC, NC)                                 \
  cnnkit::cpu::gemm_detail::GemmKernel<VEC::T> NAME() {                                   \
    static_assert((MC) % (MR) == 0 && (NC) % ((NV) * VEC::width) == 0, "blocking");       \
    return {{MR, (NV) * VEC::width, KC, MC, NC},                                           \
            [](const cnnkit::cpu::gemm_detail::GemmArgs<VEC::T>& args, VEC::T* packed_a,   \
               VEC::T* packed_b) {                                                         \
              gemm_single_thread<VEC, MR, NV>(args, {MR, (NV) * VEC::width, KC, MC, NC},   \
                                              packed_a, packed_b);                        \
            }};                                                                           \
  }
