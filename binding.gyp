{
  "targets": [
    {
      "target_name": "atelier_native",
      "sources": [
        "native/addon.cc",
        "native/tensor_store.cc",
        "native/ops.cc",
        "native/autograd.cc",
        "native/runtime.cc",
        "native/file_tensor.cc",
        "native/checkpoint.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(node native/find-libtorch.js include_dirs)"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS",
        "_GLIBCXX_USE_CXX11_ABI=<!(node native/find-libtorch.js abi)"
      ],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++14"],
      "cflags_cc": ["-frtti", "-fexceptions", "-std=gnu++17", "-O2", "-Wno-unused-parameter", "-Wno-deprecated-declarations"],
      "libraries": [
        "-L<!(node native/find-libtorch.js lib_dir)",
        "<!(node native/find-libtorch.js rpath)",
        "-Wl,--no-as-needed",
        "<!@(node native/find-libtorch.js libs)",
        "-Wl,--as-needed"
      ]
    }
  ]
}
