#include "ring.h"

#include <bpf/libbpf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"
#include "map.h"

namespace weft {

Napi::Function RingReader::Init(Napi::Env env) {
  return DefineClass(env, "RingReader",
                     {
                         InstanceMethod<&RingReader::Drain>("drain"),
                         InstanceMethod<&RingReader::Close>("close"),
                     });
}

RingReader::RingReader(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingReader>(info) {
  Napi::Env env = info.Env();
  MapHandle* map = info.Length() > 0 ? MapHandle::Unwrap(info[0]) : nullptr;
  if (!map) throw Napi::TypeError::New(env, "RingReader: map must be a MapHandle");
  if (info.Length() < 2 || !info[1].IsNumber() || info[1].As<Napi::Number>().Int64Value() <= 0)
    throw Napi::TypeError::New(env, "RingReader: recordSize must be a positive number");
  if (info.Length() < 3 || !info[2].IsFunction()) throw Napi::TypeError::New(env, "RingReader: onRecords must be a function");
  record_size_ = static_cast<size_t>(info[1].As<Napi::Number>().Int64Value());

  map_fd_ = fcntl(map->Fd(env, "RingReader"), F_DUPFD_CLOEXEC, 3);
  if (map_fd_ < 0) ThrowErrno(env, "dup", errno);
  LogReset();
  rb_ = ring_buffer__new(map_fd_, &RingReader::OnSample, this, nullptr);
  if (!rb_) {
    int err = errno;
    Shut();
    ThrowErrno(env, "ring_buffer__new", err, LogTail());
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
    Shut();
    ThrowErrno(env, "napi_get_uv_event_loop", EINVAL);
  }
  poll_ = new uv_poll_t;
  int rc = uv_poll_init(loop, poll_, ring_buffer__epoll_fd(rb_));
  if (rc == 0) {
    poll_->data = this;
    rc = uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* h, int, int) {
      auto* self = static_cast<RingReader*>(h->data);
      if (self) self->Deliver();
    });
  }
  if (rc != 0) {
    delete poll_;
    poll_ = nullptr;
    Shut();
    ThrowErrno(env, "uv_poll_start", -rc);
  }
  // Events are welcome, but waiting for them must not keep the process alive.
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  on_records_ = Napi::Persistent(info[2].As<Napi::Function>());
  async_ = std::make_unique<Napi::AsyncContext>(env, "weft:ring");
}

RingReader::~RingReader() { Shut(); }

void RingReader::Shut() {
  if (poll_) {
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  if (rb_) {
    ring_buffer__free(rb_);
    rb_ = nullptr;
  }
  if (map_fd_ >= 0) close(map_fd_);
  map_fd_ = -1;
}

int RingReader::OnSample(void* ctx, void* data, size_t size) {
  auto* self = static_cast<RingReader*>(ctx);
  if (size != self->record_size_) {
    self->skipped_++;
    return 0;
  }
  const auto* p = static_cast<const uint8_t*>(data);
  self->pending_.insert(self->pending_.end(), p, p + size);
  return 0;
}

// Reads what the ring holds and hands it to JS; returns the number of records.
size_t RingReader::Deliver() {
  if (!rb_) return 0;
  ring_buffer__consume(rb_);
  if (pending_.empty()) return 0;
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  size_t n = pending_.size() / record_size_;
  Napi::Buffer<uint8_t> buf = Napi::Buffer<uint8_t>::Copy(env, pending_.data(), pending_.size());
  pending_.clear();
  try {
    on_records_.MakeCallback(env.Global(), {buf}, *async_);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
  return n;
}

Napi::Value RingReader::Drain(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(Deliver()));
}

Napi::Value RingReader::Close(const Napi::CallbackInfo& info) {
  Shut();
  return info.Env().Undefined();
}

}  // namespace weft
