#pragma once

#include <napi.h>

namespace weft {

// src/workers/memory.ts: giving memory back once a big snapshot has been applied.
Napi::Value MallocTrim(const Napi::CallbackInfo& info);
Napi::Value LowMemoryNotification(const Napi::CallbackInfo& info);

}  // namespace weft
