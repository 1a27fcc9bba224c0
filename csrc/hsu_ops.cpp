// Schemas of the hsu ops. Kernels register themselves per dispatch key: csrc/cpu/ for CPU,
// csrc/cuda/ for CUDA. Autograd and fake (meta) kernels are registered once, in hsu_kernels/_ext.py.
#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <exception>
#include <string>

#include "hsu_kinds.h"

namespace hsu {
extern std::atomic<bool> g_close_pair_check;  // csrc/cpu/hsu_cpu_dispatch.cpp
std::string cpu_capability();                 // csrc/cpu/hsu_cpu_dispatch.cpp
std::string cpu_capabilities_built();
}

extern "C" {
// _set_close_pair_check(on: bool) -> bool (the previous setting): the benchmark's switch of the CPU
// kernel's close-pair check (see csrc/cpu/hsu_cpu.cpp); never needed otherwise.
static PyObject* set_close_pair_check(PyObject*, PyObject* arg) {
  const int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  return PyBool_FromLong(hsu::g_close_pair_check.exchange(on != 0));
}

// _cpu_capability() -> str: the instruction set the CPU kernels run with ("default", "avx2", "avx512", or the
// -march value of a build for one CPU); ValueError for a bad HSU_CPU_CAPABILITY.
static PyObject* cpu_capability(PyObject*, PyObject*) {
  try {
    return PyUnicode_FromString(hsu::cpu_capability().c_str());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
}

// _cpu_capabilities_built() -> str: the comma-separated copies of the CPU kernels this build holds.
static PyObject* cpu_capabilities_built(PyObject*, PyObject*) {
  return PyUnicode_FromString(hsu::cpu_capabilities_built().c_str());
}

// _kind_codes() -> dict: {name: code} of every kind the C++ and CUDA kernels know, from csrc/hsu_kinds.h's
// table (tests/test_kinds_cpp.py checks it against hsu_kernels.kinds.KIND_CODE).
static PyObject* kind_codes(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  for (int64_t k = 0; k < hsu::kNumKinds; ++k) {
    PyObject* code = PyLong_FromLongLong(k);
    const int rc = code == nullptr ? -1 : PyDict_SetItemString(d, hsu::kKindNames[k], code);
    Py_XDECREF(code);
    if (rc != 0) {
      Py_DECREF(d);
      return nullptr;
    }
  }
  return d;
}

static PyMethodDef methods[] = {
    {"_set_close_pair_check", set_close_pair_check, METH_O, "Benchmark switch of the CPU close-pair check."},
    {"_cpu_capability", cpu_capability, METH_NOARGS, "The instruction set the CPU kernels run with."},
    {"_cpu_capabilities_built", cpu_capabilities_built, METH_NOARGS, "The CPU kernel copies of this build."},
    {"_kind_codes", kind_codes, METH_NOARGS, "{name: code} of the kinds the compiled kernels know."},
    {nullptr, nullptr, 0, nullptr}};

// Importing hsu_kernels._C runs the static registrations below; the module holds the build fact `openmp`
// (1 when at::parallel_for runs on several threads in this extension: it is an inline template, serial
// when the extension is compiled without OpenMP) and the benchmark switch above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
  // w: [B, N, D]. Returns (E, G): E[b] = scale * the sum over unordered pairs of the (half-space) energy of
  // w[b] (docs/spec.md §4; scale = 1 is the "sum" reduction, 1/pairs the mean, applied inside so that a mean
  // whose sum overflows is still finite), G = dE/dw. The Gaussian kind (4) returns the log-sum
  // E[b] = log(scale * sum exp(-t d2)) and its gradient. E is float32 for half inputs, else w's dtype.
  m.def(
      "energy_grad(Tensor w, int kind, float s, float t, float eps_norm, float eps_ang, bool half_space, "
      "bool normalize, float scale=1.0) -> (Tensor, Tensor)");
  // x: [B, Nx, D], y: [B, Ny, D]. Returns (E, Gx, Gy) with E[b] = scale * sum_i sum_j psi(x_i, y_j)
  // (Gaussian: log(scale * sum_i sum_j exp(-t d2))).
  m.def(
      "cross_energy_grad(Tensor x, Tensor y, int kind, float s, float t, float eps_norm, float eps_ang, "
      "bool half_space, bool normalize, float scale=1.0) -> (Tensor, Tensor, Tensor)");
}
