// Giving memory back to the kernel after a burst (start-up, a config of 10,000 endpoints
// applied, a worker thread's first snapshot): src/workers/memory.ts says when and why.
#include "memory.h"

#include <malloc.h>
#include <v8.h>

namespace weft {

// glibc keeps what was freed in its arenas (one per thread that allocated, up to 8 per
// core): the structured-clone buffers of a snapshot, the YAML parser's nodes. malloc_trim(0)
// returns the free pages of every arena, not only the top of the main heap.
// Returns true when some memory was released.
Napi::Value MallocTrim(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), malloc_trim(0) != 0);
}

// V8's "low memory" collection of the calling thread's isolate: full collections until
// nothing more is freed, the young generation shrunk to its minimum and unused pages
// released. A worker thread's heap otherwise keeps what its start-up grew it to: V8 only
// runs its memory reducer after a full collection, which a worker that received one
// snapshot may never have.
Napi::Value LowMemoryNotification(const Napi::CallbackInfo& info) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
  return info.Env().Undefined();
}

}  // namespace weft
