// File descriptors between agents on one node (src/lifecycle/): a successor takes the listening
// sockets and the pin-root lock of the agent it replaces over a unix socket (SCM_RIGHTS).
#pragma once

#include <napi.h>

namespace weft {

Napi::Value UnixConnect(const Napi::CallbackInfo& info);  // (path) -> fd (blocking stream socket)
Napi::Value SendFds(const Napi::CallbackInfo& info);      // (sockFd, data: Buffer, fds: number[]) -> bytes sent
Napi::Value RecvFds(const Napi::CallbackInfo& info);      // (sockFd, maxBytes, timeoutMs) -> { data, fds }
Napi::Value Flock(const Napi::CallbackInfo& info);        // (fd) -> true when the exclusive lock was taken, false when held elsewhere
Napi::Value PeerCred(const Napi::CallbackInfo& info);     // (sockFd) -> { pid, uid, gid }
Napi::Value DupFd(const Napi::CallbackInfo& info);        // (fd) -> a new fd (close-on-exec) for the same open file

}  // namespace weft
