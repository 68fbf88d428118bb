{
  "targets": [
    {
      "target_name": "weft_bpf",
      "sources": [
        "native/addon.cc",
        "native/errors.cc",
        "native/fdpass.cc",
        "native/object.cc",
        "native/map.cc",
        "native/memory.cc",
        "native/ops.cc",
        "native/ring.cc",
        "native/splice.cc"
      ],
      "include_dirs": ["bpf"],
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except"
      ],
      "defines": ["NAPI_VERSION=8"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "cflags_cc!": ["-std=gnu++17", "-fno-exceptions"],
      "libraries": ["-lbpf", "-lelf", "-lz"]
    }
  ]
}
