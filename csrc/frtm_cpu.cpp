// CPU implementations of the frtm kernels: loops over the arithmetic in frtm_kernels.h, parallel over cores with
// at::parallel_for (compiled with -fopenmp, else it runs on one thread).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "frtm_checks.h"
#include "frtm_kernels.h"

// The channel contractions are compiled once per instruction set and picked at load time (GCC function
// multi-versioning): AVX-512 and AVX2+FMA where the CPU has them, baseline x86-64 otherwise.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FRTM_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FRTM_CLONES
#endif

namespace frtm {
namespace {

// CPU lane values: GCC vector types of 64, 32 and 16 bytes (one cache line of pixels, then narrower tails).
template <typename T, int Bytes>
struct VecOf;
#define FRTM_VEC(T, BYTES)                                                        \
  template <>                                                                     \
  struct VecOf<T, BYTES> {                                                        \
    typedef T type __attribute__((vector_size(BYTES)));                           \
  };
FRTM_VEC(float, 64)
FRTM_VEC(float, 32)
FRTM_VEC(float, 16)
FRTM_VEC(double, 64)
FRTM_VEC(double, 32)
FRTM_VEC(double, 16)
#undef FRTM_VEC
template <typename T, int Bytes>
using Vec = typename VecOf<T, Bytes>::type;

template <typename V, typename T>
struct VecLanes {
  static constexpr int size = static_cast<int>(sizeof(V) / sizeof(T));
  static inline __attribute__((always_inline)) V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(v));  // unaligned load
    return v;
  }
  static inline __attribute__((always_inline)) void store(T* p, const V& v) { std::memcpy(p, &v, sizeof(v)); }
};

}  // namespace
template <> struct Lanes<Vec<float, 64>, float> : VecLanes<Vec<float, 64>, float> {};
template <> struct Lanes<Vec<float, 32>, float> : VecLanes<Vec<float, 32>, float> {};
template <> struct Lanes<Vec<float, 16>, float> : VecLanes<Vec<float, 16>, float> {};
template <> struct Lanes<Vec<double, 64>, double> : VecLanes<Vec<double, 64>, double> {};
template <> struct Lanes<Vec<double, 32>, double> : VecLanes<Vec<double, 32>, double> {};
template <> struct Lanes<Vec<double, 16>, double> : VecLanes<Vec<double, 16>, double> {};
namespace {

template <typename T>
constexpr int lanes() {
  return static_cast<int>(64 / sizeof(T));
}

// Blocks of threads: split [0, n) into about one chunk per thread.
inline int64_t grain_for(int64_t n) {
  return std::max<int64_t>(1, (n + at::get_num_threads() - 1) / at::get_num_threads());
}

// ---- channel contractions over spans of consecutive pixels ---------------------------------------------------

// out[t * ostride + i] = sum_j kernel[j, t] x[j * stride + i] for i in [i, L), lane value L_ at a time.
template <typename T, typename L_>
inline __attribute__((always_inline)) int64_t taps_blocks(const T* x, int64_t stride, const T* kernel, int64_t C,
                                                          int64_t i, int64_t L, T* out, int64_t ostride) {
  constexpr int n = Lanes<L_, T>::size;
  for (; i + n <= L; i += n) {
    L_ acc[9] = {};
    taps_accumulate<L_>(x + i, stride, kernel, C, acc);
    for (int t = 0; t < 9; ++t) Lanes<L_, T>::store(out + t * ostride + i, acc[t]);
  }
  return i;
}

template <typename T>
inline __attribute__((always_inline)) void taps_span_impl(const T* x, int64_t stride, const T* kernel, int64_t C,
                                                          int64_t L, T* out, int64_t ostride) {
  int64_t i = taps_blocks<T, Vec<T, 64>>(x, stride, kernel, C, 0, L, out, ostride);
  i = taps_blocks<T, Vec<T, 32>>(x, stride, kernel, C, i, L, out, ostride);
  i = taps_blocks<T, Vec<T, 16>>(x, stride, kernel, C, i, L, out, ostride);
  taps_blocks<T, T>(x, stride, kernel, C, i, L, out, ostride);
}

// accv[j][t] (a lane value of partial sums each) += x[j, i..] qs[t, i..] over pixels i < L, for channels j < C.
// The lane-wide partial sums are reduced once at the end (reduce_lanes), not once per span.
template <typename T, int R>
inline __attribute__((always_inline)) int64_t corr_channels(const T* x, int64_t stride, int64_t j, int64_t C,
                                                            const T* qs, int64_t qstride, int64_t L, T* accv) {
  using L_ = Vec<T, 64>;
  constexpr int n = Lanes<L_, T>::size;
  for (; j + R <= C; j += R) {
    L_ acc[R][9];
    std::memcpy(acc, accv + j * 9 * n, sizeof(acc));
    int64_t i = 0;
    for (; i + n <= L; i += n) corr_accumulate<R, L_>(x + j * stride + i, stride, qs + i, qstride, acc);
    if (i < L) {  // tail pixels: zero-padded copies, so they go through the same arithmetic
      T xt[R][n] = {}, qt[9][n] = {};
      for (int r = 0; r < R; ++r) std::memcpy(xt[r], x + (j + r) * stride + i, (L - i) * sizeof(T));
      for (int t = 0; t < 9; ++t) std::memcpy(qt[t], qs + t * qstride + i, (L - i) * sizeof(T));
      corr_accumulate<R, L_>(xt[0], n, qt[0], n, acc);
    }
    std::memcpy(accv + j * 9 * n, acc, sizeof(acc));
  }
  return j;
}

template <typename T>
inline __attribute__((always_inline)) void corr_span_impl(const T* x, int64_t stride, int64_t C, const T* qs,
                                                          int64_t qstride, int64_t L, T* accv) {
  const int64_t j = corr_channels<T, 2>(x, stride, 0, C, qs, qstride, L, accv);  // two channels share qs loads
  corr_channels<T, 1>(x, stride, j, C, qs, qstride, L, accv);
}

FRTM_CLONES void taps_span(const float* x, int64_t stride, const float* k, int64_t C, int64_t L, float* out,
                           int64_t os) {
  taps_span_impl<float>(x, stride, k, C, L, out, os);
}
FRTM_CLONES void taps_span(const double* x, int64_t stride, const double* k, int64_t C, int64_t L, double* out,
                           int64_t os) {
  taps_span_impl<double>(x, stride, k, C, L, out, os);
}
FRTM_CLONES void corr_span(const float* x, int64_t stride, int64_t C, const float* qs, int64_t qstride, int64_t L,
                           float* accv) {
  corr_span_impl<float>(x, stride, C, qs, qstride, L, accv);
}
FRTM_CLONES void corr_span(const double* x, int64_t stride, int64_t C, const double* qs, int64_t qstride,
                           int64_t L, double* accv) {
  corr_span_impl<double>(x, stride, C, qs, qstride, L, accv);
}

// Lane-wide partial sums (C, 9, V) -> out (C, 9), adding in double.
template <typename T>
void reduce_lanes(const T* accv, int64_t C, double* out) {
  constexpr int V = lanes<T>();
  for (int64_t j = 0; j < C * 9; ++j) {
    double s = 0.0;
    for (int l = 0; l < V; ++l) s += accv[j * V + l];
    out[j] += s;
  }
}

// ---- the residual map q on a range of rows of a (K * Hf, Wf) grid ----------------------------------------------

struct Grid {
  int64_t C, K, Hf, Wf;
  int64_t cs;  // channel stride of x: X[j] starts at x + j * cs (a slice of a larger memory needs no copy)
  int64_t rows() const { return K * Hf; }
  int64_t pixels() const { return K * Hf * Wf; }
};

// Features whose (K, Hf, Wf) block is dense keep their channel stride (a memory's first K slots are such a view);
// anything else is copied.
at::Tensor features(const at::Tensor& x) {
  const bool dense = (x.size(3) == 1 || x.stride(3) == 1) && (x.size(2) == 1 || x.stride(2) == x.size(3)) &&
                     (x.size(1) == 1 || x.stride(1) == x.size(2) * x.size(3));
  return dense ? x : x.contiguous();
}

Grid grid_of(const at::Tensor& x) { return Grid{x.size(0), x.size(1), x.size(2), x.size(3), x.stride(0)}; }

// f(b) for columns [b0, b1) of a row of width Wf: the edge columns apart, so that in the interior loop the
// column tests of the stencil functions are known true (and fold away: the loop vectorises).
template <typename F>
inline __attribute__((always_inline)) void for_columns(int64_t b0, int64_t b1, int64_t Wf, F&& f) {
  int64_t b = b0;
  if (b == 0 && b < b1) f(b++);
  const int64_t inner = std::min(b1, Wf - 1);
  for (; b < inner; ++b) f(b);
  for (; b < b1; ++b) f(b);
}

// Row `r` of a later stage needs rows r - 1, r, r + 1 of the stage before (those in the same sample): is it ready
// when that stage has finished rows [.., done)?
inline bool row_ready(int64_t r, int64_t done, const Grid& G) {
  const bool need_next = r + 1 < G.rows() && (r + 1) % G.Hf != 0;
  return r < done && (!need_next || r + 1 < done);
}

// ---- stencil_precompute -----------------------------------------------------------------------------------------

template <typename T>
void stencil_precompute_kernel(const T* y, const T* v, int64_t K, int64_t H, int64_t W, int64_t Hf, int64_t Wf,
                               T* g, T* bh) {
  // Stage 1: (K, Hf, 4, W) row reductions; stage 2: columns, straight into g (K, 9, Hf, Wf) and bh (K, Hf, Wf).
  std::vector<T> rows(static_cast<size_t>(K * Hf * 4 * W));
  constexpr int V = lanes<T>();
  at::parallel_for(0, K * Hf, grain_for(K * Hf), [&](int64_t begin, int64_t end) {
    for (int64_t ka = begin; ka < end; ++ka) {
      const int64_t k = ka / Hf, a = ka % Hf;
      const T* vk = v + k * H * W;
      const T* yk = y + k * H * W;
      T* out = rows.data() + ka * 4 * W;
      int64_t x = 0;
      for (; x + V <= W; x += V) {
        Vec<T, 64> acc[4];
        stencil_rows(vk + x, yk + x, W, H, Hf, a, acc);
        for (int d = 0; d < 4; ++d) Lanes<Vec<T, 64>, T>::store(out + d * W + x, acc[d]);
      }
      for (; x < W; ++x) {
        T acc[4];
        stencil_rows(vk + x, yk + x, W, H, Hf, a, acc);
        for (int d = 0; d < 4; ++d) out[d * W + x] = acc[d];
      }
    }
  });
  at::parallel_for(0, K * Hf, grain_for(K * Hf), [&](int64_t begin, int64_t end) {
    for (int64_t ka = begin; ka < end; ++ka) {
      const int64_t k = ka / Hf, a = ka % Hf;
      for (int64_t b = 0; b < Wf; ++b) {
        T taps[9];
        stencil_cols(rows.data() + ka * 4 * W, W, W, Wf, b, taps, bh + ka * Wf + b);
        for (int t = 0; t < 9; ++t) g[((k * 9 + t) * Hf + a) * Wf + b] = taps[t];
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> stencil_precompute_cpu(const at::Tensor& labels, const at::Tensor& pixel_weights,
                                                          int64_t hf, int64_t wf) {
  check_labels(labels, pixel_weights, hf, wf);
  const auto y = labels.contiguous(), v = pixel_weights.contiguous();
  const int64_t K = y.size(0), H = y.size(1), W = y.size(2);
  auto g = at::empty({K, 9, hf, wf}, y.options());
  auto bh = at::empty({K, hf, wf}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "frtm_stencil_precompute", [&] {
    stencil_precompute_kernel<scalar_t>(y.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), K, H, W, hf, wf,
                                        g.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>());
  });
  return {g, bh};
}

// ---- stencil_apply ----------------------------------------------------------------------------------------------

at::Tensor stencil_apply_cpu(const at::Tensor& g_in, const at::Tensor& s_in) {
  check_float(s_in, "s");
  check_same(s_in, g_in, "g");
  TORCH_CHECK(s_in.dim() == 3 && g_in.dim() == 4 && g_in.size(0) == s_in.size(0) && g_in.size(1) == 9 &&
                  g_in.size(2) == s_in.size(1) && g_in.size(3) == s_in.size(2),
              "frtm: stencil_apply wants g (K, 9, Hf, Wf) and s (K, Hf, Wf), got ", g_in.sizes(), " and ",
              s_in.sizes());
  const auto g = g_in.contiguous(), s = s_in.contiguous();
  const int64_t K = s.size(0), Hf = s.size(1), Wf = s.size(2), plane = Hf * Wf;
  auto out = at::empty_like(s);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "frtm_stencil_apply", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, K * Hf, grain_for(K * Hf), [&](int64_t begin, int64_t end) {
      for (int64_t ka = begin; ka < end; ++ka) {
        const int64_t k = ka / Hf, a = ka % Hf;
        const Rows3<scalar_t> rows = rows_around(sp + ka * Wf, a, Hf, Wf);
        for (int64_t b = 0; b < Wf; ++b)
          op[ka * Wf + b] = stencil_at(gp + k * 9 * plane + a * Wf + b, plane, rows, b, Wf);
      }
    });
  });
  return out;
}

// ---- conv3x3_flat -------------------------------------------------------------------------------------------------

template <typename T>
void conv_kernel(const T* x, const T* kernel, const Grid& G, T* out) {
  const int64_t N = G.pixels();
  std::vector<T> taps(static_cast<size_t>(9 * N));
  constexpr int64_t kSpan = 1024;  // pixels per task: a few cache lines per channel
  const int64_t spans = (N + kSpan - 1) / kSpan;
  at::parallel_for(0, spans, grain_for(spans), [&](int64_t begin, int64_t end) {
    for (int64_t sp = begin; sp < end; ++sp) {
      const int64_t i0 = sp * kSpan, L = std::min(kSpan, N - i0);
      taps_span(x + i0, G.cs, kernel, G.C, L, taps.data() + i0, N);
    }
  });
  at::parallel_for(0, G.rows(), grain_for(G.rows()), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const Rows3<T> rows = rows_around(taps.data() + r * G.Wf, r % G.Hf, G.Hf, G.Wf);
      for_columns(0, G.Wf, G.Wf, [&](int64_t b) { out[r * G.Wf + b] = conv_from_taps(rows, N, b, G.Wf); });
    }
  });
}

at::Tensor conv3x3_flat_cpu(const at::Tensor& x_in, const at::Tensor& kernel_in) {
  check_features(x_in, kernel_in);
  const auto x = features(x_in), kernel = kernel_in.contiguous();
  const Grid G = grid_of(x);
  auto out = at::empty({G.K, G.Hf, G.Wf}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frtm_conv3x3_flat", [&] {
    conv_kernel<scalar_t>(x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), G, out.data_ptr<scalar_t>());
  });
  return out;
}

// ---- corr3x3_flat -------------------------------------------------------------------------------------------------

// qs[t, n - n0] for pixels n in [n0, n1) of a (K * Hf, Wf) grid: the value tap t pairs with pixel n. `q` holds the
// residual map from pixel q0 on.
template <typename T>
void shifted_span(const T* q, int64_t q0, const Grid& G, int64_t n0, int64_t n1, T* qs, int64_t qstride) {
  for (int64_t r = n0 / G.Wf; r * G.Wf < n1; ++r) {
    const int64_t b0 = std::max(n0 - r * G.Wf, int64_t{0}), b1 = std::min(n1 - r * G.Wf, G.Wf);
    const Rows3<T> rows = rows_around(q + r * G.Wf - q0, r % G.Hf, G.Hf, G.Wf);
    T* out = qs + r * G.Wf - n0;
    for (int t = 0; t < 9; ++t)
      for_columns(b0, b1, G.Wf, [&](int64_t b) { out[t * qstride + b] = shifted_for_tap(rows, t, b, G.Wf); });
  }
}

template <typename T>
void corr_kernel(const T* x, const T* tmap, const Grid& G, T* out) {
  const int64_t N = G.pixels();
  constexpr int V = lanes<T>();
  std::vector<T> qs(static_cast<size_t>(9 * N));
  shifted_span(tmap, 0, G, 0, N, qs.data(), N);
  // Parallel over channels: each thread owns its rows of the output, no reduction across threads.
  at::parallel_for(0, G.C, grain_for(G.C), [&](int64_t begin, int64_t end) {
    const int64_t n = end - begin;
    std::vector<T> accv(static_cast<size_t>(n * 9 * V), T(0));
    constexpr int64_t kSpan = 4096;
    for (int64_t i0 = 0; i0 < N; i0 += kSpan)
      corr_span(x + begin * G.cs + i0, G.cs, n, qs.data() + i0, N, std::min(kSpan, N - i0), accv.data());
    std::vector<double> sums(static_cast<size_t>(n * 9), 0.0);
    reduce_lanes(accv.data(), n, sums.data());
    for (int64_t i = 0; i < n * 9; ++i) out[begin * 9 + i] = static_cast<T>(sums[i]);
  });
}

at::Tensor corr3x3_flat_cpu(const at::Tensor& x_in, const at::Tensor& t_in) {
  check_float(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "frtm: x must be (C, K, Hf, Wf), got ", x_in.sizes());
  check_map(x_in, t_in, "t");
  const auto x = features(x_in), t = t_in.contiguous();
  const Grid G = grid_of(x);
  auto out = at::empty({G.C, 9}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frtm_corr3x3_flat", [&] {
    corr_kernel<scalar_t>(x.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), G, out.data_ptr<scalar_t>());
  });
  return out;
}

// ---- normal_corr: corr3x3(x, w (G * conv3x3(x, kernel) - bh)) in one pass over x --------------------------------
//
// Each thread takes a contiguous range of rows of the (K * Hf, Wf) grid and walks it in bands: tap responses of a
// band (the only read of x from memory), then the score rows, residual rows and correlation rows whose 3x3
// neighbourhoods are complete. The correlation re-reads rows read one band earlier, still in cache. Rows at the
// edges of a thread's range are recomputed by both neighbours (three rows of taps each side).

template <typename T>
void normal_corr_rows(const T* x, const T* kernel, const T* g, const T* w, const T* bh, const Grid& G, int64_t band,
                      int64_t r0, int64_t r1, T* accv) {
  // Rows [t0, t1) of taps, s and q live in thread-local planes. x is consumed in spans of `band` pixels, a multiple
  // of the vector width, so that spans do not end in short tails (spans ignore row ends: taps are per pixel, and
  // the correlation only needs q ready on the rows around its pixels).
  const int64_t R = G.rows(), Wf = G.Wf, Hf = G.Hf, plane_g = Hf * Wf;
  const int64_t t0 = std::max<int64_t>(0, r0 - 3), t1 = std::min(R, r1 + 3);
  const int64_t s1 = std::min(R, r1 + 2), q1 = std::min(R, r1 + 1);
  const int64_t plane = (t1 - t0) * Wf, base = t0 * Wf;  // local planes cover pixels [t0 Wf, t1 Wf)
  std::unique_ptr<T[]> buf(new T[11 * plane + 9 * band]);  // every value is written before it is read
  T* taps = buf.get();
  T* s = taps + 9 * plane;
  T* q = s + plane;
  T* qs = q + plane;
  const int64_t c_end = r1 * Wf;
  int64_t pt = base, pc = r0 * Wf;  // next pixel of taps, of the correlation
  int64_t ds = std::max<int64_t>(0, r0 - 2), dq = std::max<int64_t>(0, r0 - 1);  // next row of s, of q
  while (pc < c_end) {
    if (pt < t1 * Wf) {
      const int64_t n = std::min(band, t1 * Wf - pt);
      taps_span(x + pt, G.cs, kernel, G.C, n, taps + (pt - base), plane);
      pt += n;
    }
    const int64_t rows_tapped = pt / Wf;  // rows whose taps are complete: [t0, rows_tapped)
    for (; ds < s1 && row_ready(ds, rows_tapped, G); ++ds) {
      const Rows3<T> rows = rows_around(taps + ds * Wf - base, ds % Hf, Hf, Wf);
      T* out = s + ds * Wf - base;
      for_columns(0, Wf, Wf, [&](int64_t b) { out[b] = conv_from_taps(rows, plane, b, Wf); });
    }
    for (; dq < q1 && row_ready(dq, ds, G); ++dq) {
      const int64_t k = dq / Hf, a = dq % Hf;
      const Rows3<T> rows = rows_around(s + dq * Wf - base, a, Hf, Wf);
      const T* gk = g + k * 9 * plane_g + a * Wf;
      T* out = q + dq * Wf - base;
      if (bh) {
        const T* bk = bh + dq * Wf;
        for_columns(0, Wf, Wf, [&](int64_t b) { out[b] = residual_at(gk + b, plane_g, rows, bk + b, w[k], b, Wf); });
      } else {
        for_columns(0, Wf, Wf, [&](int64_t b) { out[b] = residual_at<T>(gk + b, plane_g, rows, nullptr, w[k], b, Wf); });
      }
    }
    int64_t rows_ready = pc / Wf;  // the correlation of a row needs q on the rows around it
    while (rows_ready < r1 && row_ready(rows_ready, dq, G)) ++rows_ready;
    int64_t pe = std::min(rows_ready * Wf, pc + band);
    if (pe < c_end) pe = pc + (pe - pc) / lanes<T>() * lanes<T>();  // whole vectors, except at the very end
    if (pe > pc) {
      shifted_span(q, base, G, pc, pe, qs, band);
      corr_span(x + pc, G.cs, G.C, qs, band, pe - pc, accv);
      pc = pe;
    } else {
      TORCH_CHECK(pt < t1 * Wf, "frtm: normal_corr pipeline stalled (a bug)");
    }
  }
}

template <typename T>
void normal_corr_kernel(const T* x, const T* kernel, const T* g, const T* w, const T* bh, const Grid& G, T* out) {
  constexpr int V = lanes<T>();
  // Pixels per span (a multiple of every vector width): the span's features plus the three rows the correlation
  // lags behind should stay in L2.
  // Measured on a 2-core EPYC (C = 1024 and 96): 256 pixels beat 64..2048.
  const int64_t band = 256;
  const int nthreads = at::get_num_threads();
  std::vector<double> partial(static_cast<size_t>(nthreads) * G.C * 9, 0.0);
  at::parallel_for(0, G.rows(), grain_for(G.rows()), [&](int64_t r0, int64_t r1) {
    std::vector<T> accv(static_cast<size_t>(G.C * 9 * V), T(0));
    normal_corr_rows(x, kernel, g, w, bh, G, band, r0, r1, accv.data());
    reduce_lanes(accv.data(), G.C, partial.data() + at::get_thread_num() * G.C * 9);
  });
  for (int64_t i = 0; i < G.C * 9; ++i) {
    double s = 0.0;
    for (int th = 0; th < nthreads; ++th) s += partial[th * G.C * 9 + i];
    out[i] = static_cast<T>(s);
  }
}

at::Tensor normal_corr_cpu(const at::Tensor& x_in, const at::Tensor& kernel_in, const at::Tensor& g_in,
                           const at::Tensor& w_in, const std::optional<at::Tensor>& target) {
  check_features(x_in, kernel_in);
  check_stencil(x_in, g_in);
  check_weights(x_in, w_in);
  if (target.has_value()) check_map(x_in, *target, "target");
  const auto x = features(x_in), kernel = kernel_in.contiguous(), g = g_in.contiguous();
  const auto w = w_in.reshape({-1}).contiguous();
  const at::Tensor bh = target.has_value() ? target->contiguous() : at::Tensor();
  const Grid G = grid_of(x);
  auto out = at::empty({G.C, 9}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frtm_normal_corr", [&] {
    normal_corr_kernel<scalar_t>(x.data_ptr<scalar_t>(), kernel.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                                 w.data_ptr<scalar_t>(), bh.defined() ? bh.data_ptr<scalar_t>() : nullptr, G,
                                 out.data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(frtm, CPU, m) {
  m.impl("stencil_precompute", &stencil_precompute_cpu);
  m.impl("stencil_apply", &stencil_apply_cpu);
  m.impl("conv3x3_flat", &conv3x3_flat_cpu);
  m.impl("corr3x3_flat", &corr3x3_flat_cpu);
  m.impl("normal_corr", &normal_corr_cpu);
}

}  // namespace frtm
