// Splicer: the agent's side of the kernel splice (bpf/splice.bpf.c). It owns, per spliced
// connection, a dup of each of the two socket fds, their entries in the splice maps, and their
// registration in a private epoll set that watches for FIN and errors only. One uv_poll on that
// epoll fd tells JavaScript, in batches, which socket ended; data never comes this way.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <unordered_map>

namespace weft {

class Splicer : public Napi::ObjectWrap<Splicer> {
 public:
  static Napi::Function Init(Napi::Env env);
  // (inMap: MapHandle, outMap: MapHandle, peerMap: MapHandle, onEvents: (Uint32Array) => void)
  explicit Splicer(const Napi::CallbackInfo& info);
  ~Splicer() override;

 private:
  struct Pair {
    int fd[2] = {-1, -1};        // our dups of the two sockets
    uint64_t cookie[2] = {0, 0};  // socket cookies: the keys in every splice map
    uint64_t base[2] = {0, 0};    // bytes the socket had taken to send when it was spliced
  };

  Napi::Value Add(const Napi::CallbackInfo& info);          // (fdA, fdB) -> id
  Napi::Value Bytes(const Napi::CallbackInfo& info);        // (id) -> [fromA, fromB]
  Napi::Value Unsent(const Napi::CallbackInfo& info);       // (id, side) -> bytes still queued for side
  Napi::Value Shutdown(const Napi::CallbackInfo& info);     // (id, side) -> errno or 0
  Napi::Value Arm(const Napi::CallbackInfo& info);          // (id, side, watchFin)
  Napi::Value SocketError(const Napi::CallbackInfo& info);  // (id, side) -> errno or 0
  Napi::Value Remove(const Napi::CallbackInfo& info);       // (id) -> [fromA, fromB]
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value GetSize(const Napi::CallbackInfo& info);

  Pair& Get(Napi::Env env, const Napi::CallbackInfo& info, const char* op);
  int Side(const Napi::CallbackInfo& info, size_t i);
  uint64_t Moved(uint64_t cookie) const;
  void Unmap(const Pair& p);
  void Release(Pair& p);
  void UpdateRef();
  void Deliver();
  void Shut();

  int in_fd_ = -1, out_fd_ = -1, peer_fd_ = -1;  // dups of the map fds
  int epfd_ = -1;
  uv_poll_t* poll_ = nullptr;  // freed in its close callback
  bool refed_ = false;
  Napi::FunctionReference on_events_;
  std::unique_ptr<Napi::AsyncContext> async_;
  std::unordered_map<uint32_t, Pair> pairs_;
  uint32_t next_id_ = 1;
};

}  // namespace weft
