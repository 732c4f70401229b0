// CUDA implementations of the frtm kernels (module frtm_plugin._C_cuda). Only launch and reduction scaffolding
// lives here: every value is computed by the functions of frtm_kernels.h, the same ones the CPU module runs.
#include <Python.h>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "frtm_checks.h"
#include "frtm_kernels.h"

namespace frtm {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), "frtm: ", name, " must be a CUDA tensor");
}

#define FRTM_LAUNCH_CHECK() C10_CUDA_KERNEL_LAUNCH_CHECK()

// Features whose (K, Hf, Wf) block is dense keep their channel stride (a memory's first K slots are such a view).
at::Tensor features(const at::Tensor& x) {
  const bool dense = (x.size(3) == 1 || x.stride(3) == 1) && (x.size(2) == 1 || x.stride(2) == x.size(3)) &&
                     (x.size(1) == 1 || x.stride(1) == x.size(2) * x.size(3));
  return dense ? x : x.contiguous();
}

// ---- one thread per output element ------------------------------------------------------------------------------

// Stage 1 of the stencil precompute: rows (K, Hf, 4, W), one thread per (k, a, x).
template <typename T>
__global__ void stencil_rows_kernel(const T* y, const T* v, int64_t K, int64_t H, int64_t W, int64_t Hf, T* rows) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= K * Hf * W) return;
  const int64_t x = i % W, ka = i / W, k = ka / Hf, a = ka % Hf;
  T acc[4];
  stencil_rows(v + k * H * W + x, y + k * H * W + x, W, H, Hf, a, acc);
  for (int d = 0; d < 4; ++d) rows[(ka * 4 + d) * W + x] = acc[d];
}

// Stage 2: g (K, 9, Hf, Wf) and bh (K, Hf, Wf), one thread per (k, a, b).
template <typename T>
__global__ void stencil_cols_kernel(const T* rows, int64_t K, int64_t Hf, int64_t W, int64_t Wf, T* g, T* bh) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= K * Hf * Wf) return;
  const int64_t b = i % Wf, ka = i / Wf, k = ka / Hf, a = ka % Hf;
  T taps[9];
  stencil_cols(rows + ka * 4 * W, W, W, Wf, b, taps, bh + i);
  for (int t = 0; t < 9; ++t) g[((k * 9 + t) * Hf + a) * Wf + b] = taps[t];
}

template <typename T>
__global__ void stencil_apply_kernel(const T* g, const T* s, int64_t K, int64_t Hf, int64_t Wf, T* out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= K * Hf * Wf) return;
  const int64_t plane = Hf * Wf, k = i / plane, a = (i / Wf) % Hf, b = i % Wf;
  out[i] = stencil_at(g + k * 9 * plane + a * Wf + b, plane, rows_around(s + i - b, a, Hf, Wf), b, Wf);
}

// Tap responses taps (9, N) of every pixel: the channel contraction, one thread per pixel (coalesced over pixels).
template <typename T>
__global__ void taps_kernel(const T* x, int64_t cs, const T* kernel, int64_t C, int64_t N, T* taps) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  T acc[9] = {};
  taps_accumulate(x + n, cs, kernel, C, acc);
  for (int t = 0; t < 9; ++t) taps[t * N + n] = acc[t];
}

template <typename T>
__global__ void conv_from_taps_kernel(const T* taps, int64_t N, int64_t Hf, int64_t Wf, T* out) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const int64_t b = n % Wf;
  out[n] = conv_from_taps(rows_around(taps + n - b, (n / Wf) % Hf, Hf, Wf), N, b, Wf);
}

// q = w_k (G * s - bh) from s, one thread per pixel.
template <typename T>
__global__ void residual_kernel(const T* g, const T* s, const T* bh, const T* w, int64_t K, int64_t Hf, int64_t Wf,
                                T* q) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= K * Hf * Wf) return;
  const int64_t plane = Hf * Wf, k = i / plane, a = (i / Wf) % Hf, b = i % Wf;
  q[i] = residual_at(g + k * 9 * plane + a * Wf + b, plane, rows_around(s + i - b, a, Hf, Wf),
                     bh ? bh + i : nullptr, w[k], b, Wf);
}

// ---- the correlation: a reduction over pixels per (channel, tap) --------------------------------------------------

// Grid (C, chunks): each block sums its chunk of pixels for channel blockIdx.x, reduces the nine partial sums in
// shared memory and adds them to out (C, 9) (zeroed beforehand) with one atomic per tap.
template <typename T>
__global__ void corr_kernel(const T* x, int64_t cs, const T* q, int64_t N, int64_t Hf, int64_t Wf, int64_t chunk, T* out) {
  const int64_t j = blockIdx.x;
  const int64_t begin = blockIdx.y * chunk, end = min(N, begin + chunk);
  T acc[1][9] = {};
  for (int64_t n = begin + threadIdx.x; n < end; n += blockDim.x) {
    const int64_t a = (n / Wf) % Hf, b = n % Wf;
    T qs[9];
    const Rows3<T> rows = rows_around(q + n - b, a, Hf, Wf);
    for (int t = 0; t < 9; ++t) qs[t] = shifted_for_tap(rows, t, b, Wf);
    corr_accumulate<1>(x + j * cs + n, cs, qs, 1, acc);
  }
  __shared__ T partial[9][kThreads];
  for (int t = 0; t < 9; ++t) partial[t][threadIdx.x] = acc[0][t];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride)
      for (int t = 0; t < 9; ++t) partial[t][threadIdx.x] += partial[t][threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x < 9) atomicAdd(out + j * 9 + threadIdx.x, partial[threadIdx.x][0]);
}

template <typename T>
void launch_corr(const T* x, int64_t cs, const T* q, int64_t C, int64_t N, int64_t Hf, int64_t Wf, T* out, cudaStream_t st) {
  constexpr int64_t kChunk = 8192;  // pixels per block: enough blocks to fill the GPU even when C is small
  const dim3 grid(static_cast<unsigned>(C), static_cast<unsigned>((N + kChunk - 1) / kChunk));
  corr_kernel<T><<<grid, kThreads, 0, st>>>(x, cs, q, N, Hf, Wf, kChunk, out);
  FRTM_LAUNCH_CHECK();
}

template <typename T>
void launch_conv(const T* x, int64_t cs, const T* kernel, int64_t C, int64_t N, int64_t Hf, int64_t Wf, T* taps, T* out,
                 cudaStream_t st) {
  taps_kernel<T><<<blocks_for(N), kThreads, 0, st>>>(x, cs, kernel, C, N, taps);
  FRTM_LAUNCH_CHECK();
  conv_from_taps_kernel<T><<<blocks_for(N), kThreads, 0, st>>>(taps, N, Hf, Wf, out);
  FRTM_LAUNCH_CHECK();
}

// ---- ops ------------------------------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> stencil_precompute_cuda(const at::Tensor& labels, const at::Tensor& pixel_weights,
                                                           int64_t hf, int64_t wf) {
  check_labels(labels, pixel_weights, hf, wf);
  check_cuda(labels, "labels");
  const c10::cuda::CUDAGuard guard(labels.device());
  const auto y = labels.contiguous(), v = pixel_weights.contiguous();
  const int64_t K = y.size(0), H = y.size(1), W = y.size(2);
  auto rows = at::empty({K, hf, 4, W}, y.options());
  auto g = at::empty({K, 9, hf, wf}, y.options());
  auto bh = at::empty({K, hf, wf}, y.options());
  const auto st = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "frtm_stencil_precompute_cuda", [&] {
    stencil_rows_kernel<scalar_t><<<blocks_for(K * hf * W), kThreads, 0, st>>>(
        y.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), K, H, W, hf, rows.data_ptr<scalar_t>());
    FRTM_LAUNCH_CHECK();
    stencil_cols_kernel<scalar_t><<<blocks_for(K * hf * wf), kThreads, 0, st>>>(
        rows.data_ptr<scalar_t>(), K, hf, W, wf, g.data_ptr<scalar_t>(), bh.data_ptr<scalar_t>());
    FRTM_LAUNCH_CHECK();
  });
  return {g, bh};
}

at::Tensor stencil_apply_cuda(const at::Tensor& g_in, const at::Tensor& s_in) {
  check_float(s_in, "s");
  check_same(s_in, g_in, "g");
  check_cuda(s_in, "s");
  TORCH_CHECK(s_in.dim() == 3 && g_in.dim() == 4 && g_in.size(0) == s_in.size(0) && g_in.size(1) == 9 &&
                  g_in.size(2) == s_in.size(1) && g_in.size(3) == s_in.size(2),
              "frtm: stencil_apply wants g (K, 9, Hf, Wf) and s (K, Hf, Wf), got ", g_in.sizes(), " and ",
              s_in.sizes());
  const c10::cuda::CUDAGuard guard(s_in.device());
  const auto g = g_in.contiguous(), s = s_in.contiguous();
  auto out = at::empty_like(s);
  const int64_t K = s.size(0), Hf = s.size(1), Wf = s.size(2);
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "frtm_stencil_apply_cuda", [&] {
    stencil_apply_kernel<scalar_t><<<blocks_for(s.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), K, Hf, Wf, out.data_ptr<scalar_t>());
    FRTM_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor conv3x3_flat_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in) {
  check_features(x_in, kernel_in);
  check_cuda(x_in, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = features(x_in), kernel = kernel_in.contiguous();
  const int64_t C = x.size(0), K = x.size(1), Hf = x.size(2), Wf = x.size(3), N = K * Hf * Wf;
  auto taps = at::empty({9, N}, x.options());
  auto out = at::empty({K, Hf, Wf}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frtm_conv3x3_flat_cuda", [&] {
    launch_conv(x.data_ptr<scalar_t>(), x.stride(0), kernel.data_ptr<scalar_t>(), C, N, Hf, Wf, taps.data_ptr<scalar_t>(),
                out.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream());
  });
  return out;
}

at::Tensor corr3x3_flat_cuda(const at::Tensor& x_in, const at::Tensor& t_in) {
  check_float(x_in, "x");
  check_cuda(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "frtm: x must be (C, K, Hf, Wf), got ", x_in.sizes());
  check_map(x_in, t_in, "t");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = features(x_in), t = t_in.contiguous();
  const int64_t C = x.size(0), Hf = x.size(2), Wf = x.size(3), N = x.size(1) * Hf * Wf;
  auto out = at::zeros({C, 9}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frtm_corr3x3_flat_cuda", [&] {
    launch_corr(x.data_ptr<scalar_t>(), x.stride(0), t.data_ptr<scalar_t>(), C, N, Hf, Wf, out.data_ptr<scalar_t>(),
                c10::cuda::getCurrentCUDAStream());
  });
  return out;
}

// On the GPU the features are read at memory speed twice (taps, then correlation); the small maps in between stay
// in L2. No band pipeline is needed.
at::Tensor normal_corr_cuda(const at::Tensor& x_in, const at::Tensor& kernel_in, const at::Tensor& g_in,
                            const at::Tensor& w_in, const std::optional<at::Tensor>& target) {
  check_features(x_in, kernel_in);
  check_cuda(x_in, "x");
  check_stencil(x_in, g_in);
  check_weights(x_in, w_in);
  if (target.has_value()) check_map(x_in, *target, "target");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto x = features(x_in), kernel = kernel_in.contiguous(), g = g_in.contiguous();
  const auto w = w_in.reshape({-1}).contiguous();
  const at::Tensor bh = target.has_value() ? target->contiguous() : at::Tensor();
  const int64_t C = x.size(0), K = x.size(1), Hf = x.size(2), Wf = x.size(3), N = K * Hf * Wf;
  auto taps = at::empty({9, N}, x.options());
  auto s = at::empty({K, Hf, Wf}, x.options());
  auto q = at::empty({K, Hf, Wf}, x.options());
  auto out = at::zeros({C, 9}, x.options());
  const auto st = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "frtm_normal_corr_cuda", [&] {
    launch_conv(x.data_ptr<scalar_t>(), x.stride(0), kernel.data_ptr<scalar_t>(), C, N, Hf, Wf, taps.data_ptr<scalar_t>(),
                s.data_ptr<scalar_t>(), st);
    residual_kernel<scalar_t><<<blocks_for(N), kThreads, 0, st>>>(
        g.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), bh.defined() ? bh.data_ptr<scalar_t>() : nullptr,
        w.data_ptr<scalar_t>(), K, Hf, Wf, q.data_ptr<scalar_t>());
    FRTM_LAUNCH_CHECK();
    launch_corr(x.data_ptr<scalar_t>(), x.stride(0), q.data_ptr<scalar_t>(), C, N, Hf, Wf, out.data_ptr<scalar_t>(), st);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(frtm, CUDA, m) {
  m.impl("stencil_precompute", &stencil_precompute_cuda);
  m.impl("stencil_apply", &stencil_apply_cuda);
  m.impl("conv3x3_flat", &conv3x3_flat_cuda);
  m.impl("corr3x3_flat", &corr3x3_flat_cuda);
  m.impl("normal_corr", &normal_corr_cuda);
}

}  // namespace frtm

// Importing frtm_plugin._C_cuda registers the CUDA kernels (after frtm_plugin._C has defined the schemas).
extern "C" PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C_cuda", "CUDA kernels of torch.ops.frtm", -1, nullptr};
  return PyModule_Create(&def);
}
