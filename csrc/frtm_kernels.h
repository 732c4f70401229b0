// The arithmetic of every frtm kernel, written once for the CPU (.cpp) and the GPU (.cu).
//
// Nothing here allocates, launches or synchronises: each function computes the values of one output element, or of
// a "lane value" of consecutive elements (see Lanes below) so that the CPU loops vectorise; the GPU calls them on
// scalars, one thread per element. Layouts follow frtm_plugin/ops/lowres.py:
//   x       (C, K, Hf, Wf)  features, channel-first: X[j] is one contiguous vector of N = K * Hf * Wf pixels
//   kernel  (C, 9)          single-output 3x3 kernel, tap t = 3 * dy + dx reads offset (dy - 1, dx - 1)
//   g       (K, 9, Hf, Wf)  stencil U^T diag(v) U, tap t = 3 * (da + 1) + (db + 1) pairs (a, b) with (a + da, b + db)
//   maps    (K, Hf, Wf)     scores s, targets bh, residual maps q
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FRTM_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU loops are compiled once per instruction set (target_clones); the arithmetic must be
// inlined into each clone to be vectorised for it.
#define FRTM_HD inline __attribute__((always_inline))
#else
#define FRTM_HD inline
#endif

namespace frtm {

// A "lane value" L holds the values of one or more consecutive pixels: the scalar T (one GPU thread, CPU tails) or,
// on the CPU, a vector of T (frtm_cpu.cpp specialises Lanes for its vector types). The arithmetic below is written
// on L, so one definition serves both.
template <typename L, typename T>
struct Lanes {
  static constexpr int size = 1;
  FRTM_HD static L load(const T* p) { return *p; }
  FRTM_HD static void store(T* p, const L& v) { *p = v; }
};

// ---------------------------------------------------------------------------------------------------------------
// 1-D linear interpolation, PyTorch's align_corners=False convention (as lowres.interp_matrix):
// src = max((dst + 0.5) * in / out - 0.5, 0), taps i0 = floor(src) (<= in - 1) and i1 = min(i0 + 1, in - 1).

// Weight of input index `a` in output index `dst`, in double (interp_matrix accumulates in float64, then casts).
FRTM_HD double interp_weight(int64_t dst, int64_t a, double scale, int64_t in_size) {
  double src = (static_cast<double>(dst) + 0.5) * scale - 0.5;
  if (src < 0.0) src = 0.0;
  int64_t i0 = static_cast<int64_t>(src);  // src >= 0: truncation is floor
  if (i0 > in_size - 1) i0 = in_size - 1;
  const int64_t i1 = i0 + 1 < in_size ? i0 + 1 : in_size - 1;
  const double l1 = src - static_cast<double>(i0);
  double w = 0.0;
  if (i0 == a) w += 1.0 - l1;
  if (i1 == a) w += l1;
  return w;
}

// Output indices [lo, hi) that can touch input index `a` (a superset: interp_weight is 0 outside the true range).
// dst touches a only if a - 1 <= src < a + 1; one index of slack on each side absorbs rounding.
FRTM_HD void touching_range(int64_t a, double scale, int64_t out_size, int64_t* lo, int64_t* hi) {
  const double l = (static_cast<double>(a) - 0.5) / scale - 0.5;
  const double h = (static_cast<double>(a) + 1.5) / scale - 0.5;
  int64_t l_i = static_cast<int64_t>(l < 0.0 ? 0.0 : l) - 1;
  int64_t h_i = static_cast<int64_t>(h < 0.0 ? 0.0 : h) + 2;
  *lo = l_i < 0 ? 0 : l_i;
  *hi = h_i > out_size ? out_size : h_i;
}

// ---------------------------------------------------------------------------------------------------------------
// Stencil precompute, separable: rows first (H -> Hf), then columns (W -> Wf).
//
// Stage 1, for feature row a and the label columns of one lane value L (`v`, `y` point at label row 0 of the
// sample, at the lane's first column; row stride W):
//   acc[d] = sum_py v(py, .) uy_a(py) uy_{a+d-1}(py)   (d = 0, 1, 2)       acc[3] = sum_py v y uy_a(py)
template <typename L, typename T>
FRTM_HD void stencil_rows(const T* v, const T* y, int64_t W, int64_t H, int64_t Hf, int64_t a, L (&acc)[4]) {
  const double scale = static_cast<double>(Hf) / static_cast<double>(H);
  int64_t lo, hi;
  touching_range(a, scale, H, &lo, &hi);
  for (int d = 0; d < 4; ++d) acc[d] = L{};
  for (int64_t py = lo; py < hi; ++py) {
    const T ua = static_cast<T>(interp_weight(py, a, scale, Hf));
    if (ua == T(0)) continue;
    // The band products in the dtype, as lowres._band_products forms them.
    const T wm = a > 0 ? ua * static_cast<T>(interp_weight(py, a - 1, scale, Hf)) : T(0);
    const T w0 = ua * ua;
    const T wp = a + 1 < Hf ? ua * static_cast<T>(interp_weight(py, a + 1, scale, Hf)) : T(0);
    const L vv = Lanes<L, T>::load(v + py * W);
    const L yy = Lanes<L, T>::load(y + py * W);
    acc[0] += wm * vv;
    acc[1] += w0 * vv;
    acc[2] += wp * vv;
    acc[3] += ua * (vv * yy);
  }
}

// Stage 2, for one feature pixel (a, b): `rows` points at the stage-1 result of row a, four planes (d = 0..2, bh)
// of W values each, plane stride `plane`. Writes the 9 stencil taps g[3 d + e] and bh.
template <typename T>
FRTM_HD void stencil_cols(const T* rows, int64_t plane, int64_t W, int64_t Wf, int64_t b, T (&g)[9], T* bh) {
  const double scale = static_cast<double>(Wf) / static_cast<double>(W);
  int64_t lo, hi;
  touching_range(b, scale, W, &lo, &hi);
  for (int t = 0; t < 9; ++t) g[t] = T(0);
  T acc_b = T(0);
  for (int64_t px = lo; px < hi; ++px) {
    const T ub = static_cast<T>(interp_weight(px, b, scale, Wf));
    if (ub == T(0)) continue;
    const T we[3] = {b > 0 ? ub * static_cast<T>(interp_weight(px, b - 1, scale, Wf)) : T(0), ub * ub,
                     b + 1 < Wf ? ub * static_cast<T>(interp_weight(px, b + 1, scale, Wf)) : T(0)};
    for (int d = 0; d < 3; ++d) {
      const T r = rows[d * plane + px];
      for (int e = 0; e < 3; ++e) g[3 * d + e] += r * we[e];
    }
    acc_b += rows[3 * plane + px] * ub;
  }
  *bh = acc_b;
}

// ---------------------------------------------------------------------------------------------------------------
// 3x3 stencils on (Hf, Wf) maps. A map is seen through the three rows around row a (Rows3: rows a - 1, a, a + 1
// at column 0, null outside the sample); columns outside [0, Wf) are zero. A null row is the same for a whole row
// of outputs, and the column tests fold away for interior columns, so the CPU loops vectorise.

template <typename T>
struct Rows3 {
  const T* r[3];
};

// Rows a - 1, a, a + 1 of the map whose row a starts at `row_a` (rows Wf apart, Hf rows per sample).
template <typename T>
FRTM_HD Rows3<T> rows_around(const T* row_a, int64_t a, int64_t Hf, int64_t Wf) {
  Rows3<T> rows;
  rows.r[0] = a > 0 ? row_a - Wf : nullptr;
  rows.r[1] = row_a;
  rows.r[2] = a + 1 < Hf ? row_a + Wf : nullptr;
  return rows;
}

// sum over taps t of planes[t](a + dy - 1, b + dx - 1): the shift-and-add that turns the nine tap responses of a
// single-output convolution into its output. `taps` are the rows around a of plane 0; planes are `plane` apart.
template <typename T>
FRTM_HD T conv_from_taps(const Rows3<T>& taps, int64_t plane, int64_t b, int64_t Wf) {
  T acc = T(0);
  for (int dy = 0; dy < 3; ++dy) {
    if (!taps.r[dy]) continue;
    for (int dx = 0; dx < 3; ++dx) {
      if (b + dx - 1 < 0 || b + dx - 1 >= Wf) continue;
      acc += taps.r[dy][(3 * dy + dx) * plane + b + dx - 1];
    }
  }
  return acc;
}

// (G * s)(a, b) = sum_t G[t](a, b) s(a + da, b + db): `g` points at G[k, 0, a, b] (taps `plane` apart), `s` are
// the rows around a of the score map.
template <typename T>
FRTM_HD T stencil_at(const T* g, int64_t plane, const Rows3<T>& s, int64_t b, int64_t Wf) {
  T acc = T(0);
  for (int dy = 0; dy < 3; ++dy) {
    if (!s.r[dy]) continue;
    for (int dx = 0; dx < 3; ++dx) {
      if (b + dx - 1 < 0 || b + dx - 1 >= Wf) continue;
      acc += g[(3 * dy + dx) * plane] * s.r[dy][b + dx - 1];
    }
  }
  return acc;
}

// The residual map of the normal equations at one pixel: q = w_k (G * s - bh) (bh null: q = w_k G * s).
template <typename T>
FRTM_HD T residual_at(const T* g, int64_t plane, const Rows3<T>& s, const T* bh, T w, int64_t b, int64_t Wf) {
  const T gs = stencil_at(g, plane, s, b, Wf);
  return w * (bh ? gs - *bh : gs);
}

// The value that tap t of the correlation pairs with feature pixel (a, b): q(a - dy + 1, b - dx + 1), 0 outside.
// `q` are the rows around a of the residual map.
template <typename T>
FRTM_HD T shifted_for_tap(const Rows3<T>& q, int t, int64_t b, int64_t Wf) {
  const int dy = t / 3, dx = t % 3;
  const T* row = q.r[2 - dy];
  const int64_t col = b - dx + 1;
  return (row && col >= 0 && col < Wf) ? row[col] : T(0);
}

// ---------------------------------------------------------------------------------------------------------------
// The channel contractions: the only O(C) work per pixel, and the whole cost of the solver.

// Tap responses of the pixels of one lane value: acc[t] += sum_{j < C} kernel[j, t] x[j]. `x` points at X[0, n],
// successive channels `stride` apart.
template <typename L, typename T>
FRTM_HD void taps_accumulate(const T* x, int64_t stride, const T* kernel, int64_t C, L (&acc)[9]) {
  for (int64_t j = 0; j < C; ++j) {
    const L xv = Lanes<L, T>::load(x + j * stride);
    for (int t = 0; t < 9; ++t) acc[t] += kernel[j * 9 + t] * xv;
  }
}

// Correlation of R channels with the nine shifted residual maps over the pixels of one lane value:
// acc[r][t] += x[r] * qs[t]. `x` points at X[j, n], channels `stride` apart; `qs` at the shifted maps, taps
// `qstride` apart.
template <int R, typename L, typename T>
FRTM_HD void corr_accumulate(const T* x, int64_t stride, const T* qs, int64_t qstride, L (&acc)[R][9]) {
  L xv[R];
  for (int r = 0; r < R; ++r) xv[r] = Lanes<L, T>::load(x + r * stride);
  for (int t = 0; t < 9; ++t) {
    const L qv = Lanes<L, T>::load(qs + t * qstride);
    for (int r = 0; r < R; ++r) acc[r][t] += xv[r] * qv;
  }
}

}  // namespace frtm
