// MapHandle: one BPF map fd owned by JavaScript. It holds its own fd (a dup of an object's
// map fd, or one opened from a pin) and the map's sizes, read once from the kernel, so every
// Buffer handed in or out is checked against the real key and value sizes.
#pragma once

#include <napi.h>
#include <cstdint>
#include <string>

namespace weft {

class MapHandle : public Napi::ObjectWrap<MapHandle> {
 public:
  static Napi::Function Init(Napi::Env env);
  static MapHandle* Unwrap(const Napi::Value& v);
  explicit MapHandle(const Napi::CallbackInfo& info);  // (fd to dup | pin path)
  ~MapHandle() override;

  int fd() const { return fd_; }
  uint32_t key_size() const { return key_size_; }
  uint32_t value_size() const { return value_size_; }
  int Fd(Napi::Env env, const char* op) const;

 private:
  Napi::Value GetFd(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Update(const Napi::CallbackInfo& info);
  Napi::Value Lookup(const Napi::CallbackInfo& info);
  Napi::Value Delete(const Napi::CallbackInfo& info);
  Napi::Value Keys(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  void CheckKey(Napi::Env env, const Napi::Buffer<uint8_t>& key, const char* op) const;

  int fd_ = -1;
  uint32_t id_ = 0, type_ = 0, key_size_ = 0, value_size_ = 0, max_entries_ = 0;
  size_t value_bytes_ = 0;  // value_size, or one slot per possible CPU for per-CPU maps
  std::string name_;
};

// origDst(tupleMap, socketFd): the original destination of an accepted redirected
// connection, found by the socket's peer (the client ip:port); the entry is deleted once read.
Napi::Value OrigDst(const Napi::CallbackInfo& info);

}  // namespace weft
