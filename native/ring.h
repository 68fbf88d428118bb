// RingReader: reads a BPF ring buffer map from the event loop. One uv_poll on libbpf's epoll fd
// for the ring; when it is readable, every complete record is collected and handed to
// JavaScript in one Buffer (records of one fixed size, back to back).
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <vector>

struct ring_buffer;

namespace weft {

class RingReader : public Napi::ObjectWrap<RingReader> {
 public:
  static Napi::Function Init(Napi::Env env);
  // (map: MapHandle of a BPF_MAP_TYPE_RINGBUF, recordSize: number, onRecords: (Buffer) => void)
  explicit RingReader(const Napi::CallbackInfo& info);
  ~RingReader() override;

 private:
  Napi::Value Drain(const Napi::CallbackInfo& info);  // () -> records handed now
  Napi::Value Close(const Napi::CallbackInfo& info);

  static int OnSample(void* ctx, void* data, size_t size);
  size_t Deliver();
  void Shut();

  int map_fd_ = -1;  // a dup of the map fd, for libbpf
  ring_buffer* rb_ = nullptr;
  uv_poll_t* poll_ = nullptr;  // freed in its close callback
  size_t record_size_ = 0;
  std::vector<uint8_t> pending_;
  uint64_t skipped_ = 0;  // records of another size: a mismatched build
  Napi::FunctionReference on_records_;
  std::unique_ptr<Napi::AsyncContext> async_;
};

}  // namespace weft
