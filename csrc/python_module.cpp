// Makes recsys_kernels._C importable from Python; importing it runs the TORCH_LIBRARY registrations.
// Not part of the CMake (libtorch) build, which loads through torch.ops.load_library instead.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "recsys_kernels C++/CUDA kernels",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
