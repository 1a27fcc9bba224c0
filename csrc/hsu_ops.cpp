// Schemas of the hsu ops. Kernels register themselves per dispatch key: csrc/cpu/ for CPU,
// csrc/cuda/ for CUDA. Autograd and fake (meta) kernels are registered once, in hsu_kernels/_ext.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing hsu_kernels._C runs the static registrations below; the module itself has no functions,
// only the build fact `openmp` (1 when at::parallel_for runs on several threads in this extension:
// it is an inline template, serial when the extension is compiled without OpenMP).
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* m = PyModule_Create(&module_def);
#ifdef _OPENMP
  const long openmp = 1;
#else
  const long openmp = 0;
#endif
  if (m != nullptr && PyModule_AddIntConstant(m, "openmp", openmp) != 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
}

TORCH_LIBRARY(hsu, m) {
  // w: [B, N, D]. Returns (E, G): E[b] = sum over unordered pairs of the (half-space) energy of w[b]
  // (docs/spec.md §4, "sum" reduction), G = dE/dw. E is float32 for half inputs, else w's dtype.
  m.def(
      "energy_grad(Tensor w, int kind, float s, float t, float eps_norm, float eps_ang, bool half_space, "
      "bool normalize) -> (Tensor, Tensor)");
  // x: [B, Nx, D], y: [B, Ny, D]. Returns (E, Gx, Gy) with E[b] = sum_i sum_j psi(x_i, y_j).
  m.def(
      "cross_energy_grad(Tensor x, Tensor y, int kind, float s, float t, float eps_norm, float eps_ang, "
      "bool half_space, bool normalize) -> (Tensor, Tensor, Tensor)");
}
