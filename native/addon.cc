// weft_bpf: the kernel side of weft's capture, for src/capture/bpf.ts (its only importer).
#include <napi.h>

#include "addon.h"
#include "errors.h"
#include "fdpass.h"
#include "map.h"
#include "memory.h"
#include "object.h"
#include "ops.h"
#include "ring.h"
#include "splice.h"

namespace weft {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfLogger();
  auto* data = new AddonData();
  env.SetInstanceData<AddonData>(data);

  exports.Set("BpfObject", BpfObject::Init(env));
  Napi::Function map_ctor = MapHandle::Init(env);
  data->map_ctor = Napi::Persistent(map_ctor);
  exports.Set("MapHandle", map_ctor);

  exports.Set("Splicer", Splicer::Init(env));
  exports.Set("RingReader", RingReader::Init(env));

  exports.Set("attachCgroup", Napi::Function::New<AttachCgroup>(env, "attachCgroup"));
  exports.Set("attachMap", Napi::Function::New<AttachMap>(env, "attachMap"));
  exports.Set("pin", Napi::Function::New<Pin>(env, "pin"));
  exports.Set("openPin", Napi::Function::New<OpenPin>(env, "openPin"));
  exports.Set("unpin", Napi::Function::New<Unpin>(env, "unpin"));
  exports.Set("linkUpdate", Napi::Function::New<LinkUpdate>(env, "linkUpdate"));
  exports.Set("linkDetach", Napi::Function::New<LinkDetach>(env, "linkDetach"));
  exports.Set("linkInfo", Napi::Function::New<LinkInfo>(env, "linkInfo"));
  exports.Set("progInfo", Napi::Function::New<ProgInfo>(env, "progInfo"));
  exports.Set("closeFd", Napi::Function::New<CloseFd>(env, "closeFd"));
  exports.Set("mountBpffs", Napi::Function::New<MountBpffs>(env, "mountBpffs"));
  exports.Set("origDst", Napi::Function::New<OrigDst>(env, "origDst"));
  exports.Set("attachTypes", AttachTypes(env));
  // src/lifecycle: handing an agent's sockets and pin-root lock to its successor.
  exports.Set("unixConnect", Napi::Function::New<UnixConnect>(env, "unixConnect"));
  exports.Set("sendFds", Napi::Function::New<SendFds>(env, "sendFds"));
  exports.Set("recvFds", Napi::Function::New<RecvFds>(env, "recvFds"));
  exports.Set("flock", Napi::Function::New<Flock>(env, "flock"));
  exports.Set("peerCred", Napi::Function::New<PeerCred>(env, "peerCred"));
  exports.Set("dupFd", Napi::Function::New<DupFd>(env, "dupFd"));
  // src/workers/memory.ts: memory back to the kernel after a big snapshot.
  exports.Set("mallocTrim", Napi::Function::New<MallocTrim>(env, "mallocTrim"));
  exports.Set("lowMemoryNotification", Napi::Function::New<LowMemoryNotification>(env, "lowMemoryNotification"));
  return exports;
}

}  // namespace weft

static Napi::Object InitAll(Napi::Env env, Napi::Object exports) { return weft::Init(env, exports); }

NODE_API_MODULE(weft_bpf, InitAll)
