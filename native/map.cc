#include "map.h"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "addon.h"
#include "errors.h"
#include "weft.h"

namespace weft {

namespace {

bool IsPerCpu(uint32_t type) {
  return type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_ARRAY ||
         type == BPF_MAP_TYPE_LRU_PERCPU_HASH || type == BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE;
}
}  // namespace

Napi::Function MapHandle::Init(Napi::Env env) {
  Napi::Function fn = DefineClass(env, "MapHandle",
                                  {
                                      InstanceAccessor<&MapHandle::GetFd>("fd"),
                                      InstanceMethod<&MapHandle::Info>("info"),
                                      InstanceMethod<&MapHandle::Update>("update"),
                                      InstanceMethod<&MapHandle::Lookup>("lookup"),
                                      InstanceMethod<&MapHandle::Delete>("delete"),
                                      InstanceMethod<&MapHandle::Keys>("keys"),
                                      InstanceMethod<&MapHandle::Close>("close"),
                                  });
  return fn;
}

MapHandle* MapHandle::Unwrap(const Napi::Value& v) {
  AddonData* data = v.Env().GetInstanceData<AddonData>();
  if (!v.IsObject() || !data || data->map_ctor.IsEmpty() ||
      !v.As<Napi::Object>().InstanceOf(data->map_ctor.Value()))
    return nullptr;
  return Napi::ObjectWrap<MapHandle>::Unwrap(v.As<Napi::Object>());
}

MapHandle::MapHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MapHandle>(info) {
  Napi::Env env = info.Env();
  if (info.Length() > 0 && info[0].IsString()) {
    std::string path = info[0].As<Napi::String>().Utf8Value();
    fd_ = bpf_obj_get(path.c_str());
    if (fd_ < 0) {
      int err = errno;
      fd_ = -1;
      ThrowErrno(env, "bpf_obj_get", err, path);
    }
  } else {
    int src = ArgFd(info, 0, "fd");
    fd_ = fcntl(src, F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) {
      int err = errno;
      fd_ = -1;
      ThrowErrno(env, "dup", err);
    }
  }
  struct bpf_map_info mi;
  memset(&mi, 0, sizeof(mi));
  __u32 len = sizeof(mi);
  if (bpf_obj_get_info_by_fd(fd_, &mi, &len)) {
    int err = errno;
    close(fd_);
    fd_ = -1;
    ThrowErrno(env, "bpf_obj_get_info_by_fd", err, "not a map fd?");
  }
  id_ = mi.id;
  type_ = mi.type;
  key_size_ = mi.key_size;
  value_size_ = mi.value_size;
  max_entries_ = mi.max_entries;
  name_ = mi.name;
  value_bytes_ = value_size_;
  if (IsPerCpu(type_)) {
    int ncpu = libbpf_num_possible_cpus();
    if (ncpu < 0) ncpu = 1;
    value_bytes_ = ((value_size_ + 7) / 8) * 8 * static_cast<size_t>(ncpu);
  }
}

MapHandle::~MapHandle() {
  if (fd_ >= 0) close(fd_);
}

int MapHandle::Fd(Napi::Env env, const char* op) const {
  if (fd_ < 0) ThrowErrno(env, op, EBADF, "map " + name_ + " is closed");
  return fd_;
}

void MapHandle::CheckKey(Napi::Env env, const Napi::Buffer<uint8_t>& key, const char* op) const {
  if (key.Length() != key_size_)
    throw Napi::RangeError::New(env, std::string(op) + ": key of map " + name_ + " must be " +
                                         std::to_string(key_size_) + " bytes, got " +
                                         std::to_string(key.Length()));
}

Napi::Value MapHandle::GetFd(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), fd_);
}

Napi::Value MapHandle::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", Napi::Number::New(env, id_));
  out.Set("name", Napi::String::New(env, name_));
  out.Set("type", Napi::Number::New(env, type_));
  out.Set("keySize", Napi::Number::New(env, key_size_));
  out.Set("valueSize", Napi::Number::New(env, value_size_));
  out.Set("maxEntries", Napi::Number::New(env, max_entries_));
  return out;
}

Napi::Value MapHandle::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto key = ArgBuffer(info, 0, "key");
  auto value = ArgBuffer(info, 1, "value");
  uint64_t flags = 0;
  if (info.Length() > 2 && info[2].IsNumber()) flags = info[2].As<Napi::Number>().Int64Value();
  int fd = Fd(env, "bpf_map_update_elem");
  CheckKey(env, key, "update");
  if (value.Length() != value_bytes_)
    throw Napi::RangeError::New(env, "update: value of map " + name_ + " must be " +
                                         std::to_string(value_bytes_) + " bytes, got " +
                                         std::to_string(value.Length()));
  if (bpf_map_update_elem(fd, key.Data(), value.Data(), flags))
    ThrowErrno(env, "bpf_map_update_elem", errno, name_);
  return env.Undefined();
}

Napi::Value MapHandle::Lookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto key = ArgBuffer(info, 0, "key");
  int fd = Fd(env, "bpf_map_lookup_elem");
  CheckKey(env, key, "lookup");
  auto out = Napi::Buffer<uint8_t>::New(env, value_bytes_);
  if (bpf_map_lookup_elem(fd, key.Data(), out.Data())) {
    if (errno == ENOENT) return env.Null();
    ThrowErrno(env, "bpf_map_lookup_elem", errno, name_);
  }
  return out;
}

Napi::Value MapHandle::Delete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto key = ArgBuffer(info, 0, "key");
  int fd = Fd(env, "bpf_map_delete_elem");
  CheckKey(env, key, "delete");
  if (bpf_map_delete_elem(fd, key.Data())) {
    if (errno == ENOENT) return Napi::Boolean::New(env, false);
    ThrowErrno(env, "bpf_map_delete_elem", errno, name_);
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value MapHandle::Keys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env, "bpf_map_get_next_key");
  Napi::Array out = Napi::Array::New(env);
  std::vector<uint8_t> cur(key_size_), next(key_size_);
  bool first = true;
  // When the kernel deletes the current key meanwhile (LRU eviction), get_next_key starts
  // over from the first key: bound the walk so it ends even under churn.
  uint64_t limit = static_cast<uint64_t>(max_entries_) * 2 + 16;
  uint32_t n = 0;
  for (uint64_t i = 0; i < limit; i++) {
    if (bpf_map_get_next_key(fd, first ? nullptr : cur.data(), next.data())) {
      if (errno == ENOENT) break;
      ThrowErrno(env, "bpf_map_get_next_key", errno, name_);
    }
    out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), key_size_));
    cur.swap(next);
    first = false;
  }
  return out;
}

Napi::Value MapHandle::Close(const Napi::CallbackInfo& info) {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  return info.Env().Undefined();
}

Napi::Value OrigDst(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MapHandle* map = info.Length() > 0 ? MapHandle::Unwrap(info[0]) : nullptr;
  if (!map) throw Napi::TypeError::New(env, "origDst: first argument must be a MapHandle");
  int sock = ArgFd(info, 1, "socketFd");
  int mfd = map->Fd(env, "origDst");
  if (map->key_size() != sizeof(struct weft_tuple_key) ||
      map->value_size() != sizeof(struct weft_orig_dst))
    throw Napi::TypeError::New(env, "origDst: the map is not a weft tuple map");

  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  memset(&ss, 0, sizeof(ss));
  if (getpeername(sock, reinterpret_cast<struct sockaddr*>(&ss), &len))
    ThrowErrno(env, "getpeername", errno);

  struct weft_tuple_key key;
  memset(&key, 0, sizeof(key));
  if (ss.ss_family == AF_INET) {
    auto* sin = reinterpret_cast<struct sockaddr_in*>(&ss);
    key.ip = sin->sin_addr.s_addr;
    key.port = sin->sin_port;
  } else if (ss.ss_family == AF_INET6) {
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
    auto* sin6 = reinterpret_cast<struct sockaddr_in6*>(&ss);
    if (!IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) return env.Null();
    memcpy(&key.ip, &sin6->sin6_addr.s6_addr[12], 4);
    key.port = sin6->sin6_port;
  } else {
    return env.Null();
  }

  struct weft_orig_dst val;
  if (bpf_map_lookup_elem(mfd, &key, &val)) {
    if (errno == ENOENT) return env.Null();
    ThrowErrno(env, "bpf_map_lookup_elem", errno, "weft_tuple_dst");
  }
  // Read once: the entry is the agent's to consume; an LRU would evict it anyway.
  bpf_map_delete_elem(mfd, &key);

  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &val.ip, ip, sizeof(ip));
  Napi::Object out = Napi::Object::New(env);
  out.Set("ip", Napi::String::New(env, ip));
  out.Set("port", Napi::Number::New(env, ntohs(val.port)));
  out.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(val.cgroup_id)));
  out.Set("pid", Napi::Number::New(env, val.pid));
  out.Set("tid", Napi::Number::New(env, val.tid));
  return out;
}

}  // namespace weft
