// Operations on raw fds: cgroup links, pins, program info, bpffs. The TS side (BpfLink) owns
// the link fds these return and closes them with closeFd.
#pragma once

#include <napi.h>

namespace weft {

Napi::Value AttachCgroup(const Napi::CallbackInfo& info);  // (progFd, cgroupPath, type) -> fd
Napi::Value AttachMap(const Napi::CallbackInfo& info);     // (progFd, mapFd, type): sockmap programs
Napi::Value Pin(const Napi::CallbackInfo& info);           // (fd, path)
Napi::Value OpenPin(const Napi::CallbackInfo& info);       // (path) -> fd
Napi::Value Unpin(const Napi::CallbackInfo& info);         // (path) -> removed?
Napi::Value LinkUpdate(const Napi::CallbackInfo& info);    // (linkFd, newProgFd)
Napi::Value LinkDetach(const Napi::CallbackInfo& info);    // (linkFd)
Napi::Value LinkInfo(const Napi::CallbackInfo& info);      // (linkFd) -> {...}
Napi::Value ProgInfo(const Napi::CallbackInfo& info);      // (progFd) -> {...}
Napi::Value CloseFd(const Napi::CallbackInfo& info);       // (fd)
Napi::Value MountBpffs(const Napi::CallbackInfo& info);    // (path)
Napi::Value AttachTypes(Napi::Env env);                    // name -> enum bpf_attach_type

}  // namespace weft
