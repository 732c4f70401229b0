// The frtm operator library: schemas, and the solver-level ops composed from the kernels.
//
// The kernels (stencil_precompute, stencil_apply, conv3x3_flat, corr3x3_flat, normal_corr) have a CPU
// implementation in frtm_cpu.cpp and a CUDA one in frtm_cuda.cu (the separate module frtm_plugin._C_cuda). The
// solver-level ops below only fold small (c x C x 9) matrices and run the CG recursion on (c, 9)-sized tensors;
// their O(pixels) work is normal_corr, so they are written once, device-generic (CompositeExplicitAutograd), and
// run on whichever device their tensors live.
#include <Python.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <functional>
#include <vector>

#include "frtm_checks.h"

namespace frtm {
namespace {

using Tensors = std::vector<at::Tensor>;

at::Tensor normal_corr(const at::Tensor& x, const at::Tensor& kernel, const at::Tensor& g, const at::Tensor& w,
                       const std::optional<at::Tensor>& target) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("frtm::normal_corr", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const std::optional<at::Tensor>&)>();
  return op.call(x, kernel, g, w, target);
}

at::Tensor dot(const Tensors& a, const Tensors& b) {
  at::Tensor s = (a[0] * b[0]).sum();
  for (size_t i = 1; i < a.size(); ++i) s = s + (a[i] * b[i]).sum();
  return s;
}

// The released CG (see frtm_plugin/core/solver.py, which this mirrors operation for operation): preconditioned
// Polak-Ribiere with beta clamped at 0, from a zero step, a fixed number of iterations, the last residual update
// skipped, and a stop when rho is exactly 0.
Tensors conjugate_gradient(const std::function<Tensors(const Tensors&)>& apply_a, const Tensors& b,
                           const std::vector<double>& precond, int64_t num_iters) {
  const size_t n = b.size();
  Tensors x, r = b, p, r_prev;
  for (const auto& t : b) x.push_back(at::zeros_like(t));
  at::Tensor rho, rho_prev;
  for (int64_t it = 0; it < num_iters; ++it) {
    Tensors z;
    for (size_t i = 0; i < n; ++i) z.push_back(r[i] / precond[i]);
    rho_prev = rho;
    rho = dot(r, z);
    if (rho.item<double>() == 0.0) break;  // exact solution reached: further steps would divide by zero
    if (p.empty()) {
      p = z;
    } else {
      const at::Tensor beta = ((rho - dot(r_prev, z)) / rho_prev).clamp_min(0);
      for (size_t i = 0; i < n; ++i) p[i] = z[i] + beta * p[i];
    }
    const Tensors q = apply_a(p);
    const at::Tensor alpha = rho / dot(p, q);
    for (size_t i = 0; i < n; ++i) x[i] = x[i] + alpha * p[i];
    if (it < num_iters - 1) {
      r_prev = r;
      for (size_t i = 0; i < n; ++i) r[i] = r[i] - alpha * q[i];
    }
  }
  return x;
}

// ---- init problem over (W1 (c, C), W2 (c, 9)) on raw features x (C, K, Hf, Wf) --------------------------------
// J (P1, P2) = conv3x3(x, P1^T W2 + W1^T P2) and J^T t = (W2 Corr^T, W1 Corr) with Corr = corr3x3(x, t) (C, 9):
// the c channels are folded into one (C, 9) kernel, so each product is one normal_corr pass over x.

void check_init(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, const at::Tensor& w1,
                const at::Tensor& w2) {
  check_float(x, "x");
  TORCH_CHECK(x.dim() == 4, "frtm: x must be (C, K, Hf, Wf), got ", x.sizes());
  check_stencil(x, g);
  check_weights(x, w);
  check_same(x, w1, "w1");
  check_same(x, w2, "w2");
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == x.size(0), "frtm: w1 must be (c, C) with C = ", x.size(0), ", got ",
              w1.sizes());
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == w1.size(0) && w2.size(1) == 9, "frtm: w2 must be (c, 9) with c = ",
              w1.size(0), ", got ", w2.sizes());
}

Tensors init_apply(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w, const at::Tensor& w1,
                   const at::Tensor& w2, const at::Tensor& p1, const at::Tensor& p2, double reg1, double reg2) {
  const at::Tensor kernel = at::mm(p1.t(), w2) + at::mm(w1.t(), p2);
  const at::Tensor corr = normal_corr(x, kernel, g, w, std::nullopt);
  return {at::mm(w2, corr.t()) + reg1 * p1, at::mm(w1, corr) + reg2 * p2};
}

std::tuple<at::Tensor, at::Tensor> init_products(const at::Tensor& x, const at::Tensor& g, const at::Tensor& w,
                                                 const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& p1,
                                                 const at::Tensor& p2, double reg1, double reg2) {
  check_init(x, g, w, w1, w2);
  TORCH_CHECK(p1.sizes() == w1.sizes() && p2.sizes() == w2.sizes(), "frtm: p1, p2 must be shaped like w1, w2");
  check_same(x, p1, "p1");
  check_same(x, p2, "p2");
  auto a = init_apply(x, g, w, w1, w2, p1, p2, reg1, reg2);
  return {a[0], a[1]};
}

std::tuple<at::Tensor, at::Tensor> init_solve(const at::Tensor& x, const at::Tensor& g, const at::Tensor& target,
                                              const at::Tensor& w, const at::Tensor& w1_in, const at::Tensor& w2_in,
                                              double reg1, double reg2, double precond1, double precond2,
                                              at::IntArrayRef cg_iters) {
  check_init(x, g, w, w1_in, w2_in);
  check_map(x, target, "target");
  at::Tensor w1 = w1_in, w2 = w2_in;
  for (const int64_t n : cg_iters) {
    // Linearise at (W1, W2): b = -(J^T t + reg W) with t = w (G * D(x) - bh).
    const at::Tensor corr = normal_corr(x, at::mm(w1.t(), w2), g, w, target);
    const Tensors b = {-(at::mm(w2, corr.t()) + reg1 * w1), -(at::mm(w1, corr) + reg2 * w2)};
    const auto apply_a = [&](const Tensors& p) { return init_apply(x, g, w, w1, w2, p[0], p[1], reg1, reg2); };
    const Tensors delta = conjugate_gradient(apply_a, b, {precond1, precond2}, n);
    w1 = w1 + delta[0];
    w2 = w2 + delta[1];
  }
  return {w1, w2};
}

// ---- update problem over W2 (c, 9) on projected features x (c, K, Hf, Wf): linear in W2 ------------------------

at::Tensor update_solve(const at::Tensor& x, const at::Tensor& g, const at::Tensor& target, const at::Tensor& w,
                        const at::Tensor& w2_in, double reg2, double precond2, at::IntArrayRef cg_iters) {
  check_features(x, w2_in);
  check_stencil(x, g);
  check_weights(x, w);
  check_map(x, target, "target");
  at::Tensor w2 = w2_in;
  for (const int64_t n : cg_iters) {
    const Tensors b = {-(normal_corr(x, w2, g, w, target) + reg2 * w2)};
    const auto apply_a = [&](const Tensors& p) -> Tensors {
      return {normal_corr(x, p[0], g, w, std::nullopt) + reg2 * p[0]};
    };
    w2 = w2 + conjugate_gradient(apply_a, b, {precond2}, n)[0];
  }
  return w2;
}

}  // namespace

TORCH_LIBRARY(frtm, m) {
  m.def("stencil_precompute(Tensor labels, Tensor pixel_weights, int hf, int wf) -> (Tensor, Tensor)");
  m.def("stencil_apply(Tensor g, Tensor s) -> Tensor");
  m.def("conv3x3_flat(Tensor x, Tensor kernel) -> Tensor");
  m.def("corr3x3_flat(Tensor x, Tensor t) -> Tensor");
  m.def("normal_corr(Tensor x, Tensor kernel, Tensor g, Tensor sample_weights, Tensor? target) -> Tensor");
  m.def(
      "init_products(Tensor x, Tensor g, Tensor sample_weights, Tensor w1, Tensor w2, Tensor p1, Tensor p2, "
      "float reg1, float reg2) -> (Tensor, Tensor)");
  m.def(
      "init_solve(Tensor x, Tensor g, Tensor target, Tensor sample_weights, Tensor w1, Tensor w2, float reg1, "
      "float reg2, float precond1, float precond2, int[] cg_iters) -> (Tensor, Tensor)");
  m.def(
      "update_solve(Tensor x, Tensor g, Tensor target, Tensor sample_weights, Tensor w2, float reg2, "
      "float precond2, int[] cg_iters) -> Tensor");
}

TORCH_LIBRARY_IMPL(frtm, CompositeExplicitAutograd, m) {
  m.impl("init_products", &init_products);
  m.impl("init_solve", &init_solve);
  m.impl("update_solve", &update_solve);
}

}  // namespace frtm

// Importing frtm_plugin._C runs the registrations above; the module itself has no Python attributes.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "frtm operators (torch.ops.frtm)", -1, nullptr};
  return PyModule_Create(&def);
}
