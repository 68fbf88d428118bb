#pragma once

#include <napi.h>

namespace weft {

// Per-environment data (the addon may be loaded by several worker threads).
struct AddonData {
  Napi::FunctionReference map_ctor;
};

}  // namespace weft
