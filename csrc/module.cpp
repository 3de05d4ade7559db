// Python module entry point: importing perceptloss._C loads this library, whose static initialisers register
// the perceptloss operators with the dispatcher (TORCH_LIBRARY). No Python bindings are defined here.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "perceptloss operators", -1, nullptr};
  return PyModule_Create(&module_def);
}
}
