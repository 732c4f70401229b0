// Argument checks shared by the CPU and CUDA implementations (host code only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace frtm {

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "frtm: ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "frtm: ", name, " has dtype ", b.scalar_type(), ", expected ",
              a.scalar_type());
  TORCH_CHECK(a.device() == b.device(), "frtm: ", name, " is on ", b.device(), ", expected ", a.device());
}

// x (C, K, Hf, Wf) with a (C, 9) kernel.
inline void check_features(const at::Tensor& x, const at::Tensor& kernel) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 4, "frtm: x must be (C, K, Hf, Wf), got ", x.sizes());
  check_same(x, kernel, "kernel");
  TORCH_CHECK(kernel.dim() == 2 && kernel.size(0) == x.size(0) && kernel.size(1) == 9,
              "frtm: kernel must be (C, 9) = (", x.size(0), ", 9), got ", kernel.sizes());
}

// g (K, 9, Hf, Wf) and a (K, Hf, Wf) map that go with x (C, K, Hf, Wf).
inline void check_stencil(const at::Tensor& x, const at::Tensor& g) {
  check_same(x, g, "g");
  TORCH_CHECK(g.dim() == 4 && g.size(0) == x.size(1) && g.size(1) == 9 && g.size(2) == x.size(2) &&
                  g.size(3) == x.size(3),
              "frtm: g must be (K, 9, Hf, Wf) = (", x.size(1), ", 9, ", x.size(2), ", ", x.size(3), "), got ",
              g.sizes());
}

inline void check_map(const at::Tensor& x, const at::Tensor& m, const char* name) {
  check_same(x, m, name);
  TORCH_CHECK(m.dim() == 3 && m.size(0) == x.size(1) && m.size(1) == x.size(2) && m.size(2) == x.size(3), "frtm: ",
              name, " must be (K, Hf, Wf) = (", x.size(1), ", ", x.size(2), ", ", x.size(3), "), got ", m.sizes());
}

inline void check_weights(const at::Tensor& x, const at::Tensor& w) {
  check_same(x, w, "sample_weights");
  TORCH_CHECK(w.numel() == x.size(1), "frtm: sample_weights must hold K = ", x.size(1), " values, got ",
              w.sizes());
}

inline void check_labels(const at::Tensor& labels, const at::Tensor& weights, int64_t hf, int64_t wf) {
  check_float(labels, "labels");
  check_same(labels, weights, "pixel_weights");
  TORCH_CHECK(labels.dim() == 3 && labels.sizes() == weights.sizes(),
              "frtm: labels and pixel_weights must both be (K, H, W); got ", labels.sizes(), " and ",
              weights.sizes());
  TORCH_CHECK(hf > 0 && wf > 0 && labels.size(1) > 0 && labels.size(2) > 0, "frtm: empty grid");
}

}  // namespace frtm
