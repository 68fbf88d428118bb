#include "ops.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "errors.h"

namespace weft {

namespace {

struct AttachTypeName {
  const char* name;
  enum bpf_attach_type type;
};

// The attach points weft uses, by the names src/capture/constants.ts uses: the enum values
// come from the kernel header here, so TS never hard-codes them.
const AttachTypeName kAttachTypes[] = {
    {"inet4_connect", BPF_CGROUP_INET4_CONNECT},
    {"sock_ops", BPF_CGROUP_SOCK_OPS},
    {"inet4_getpeername", BPF_CGROUP_INET4_GETPEERNAME},
    {"inet_ingress", BPF_CGROUP_INET_INGRESS},
    {"sk_skb_verdict", BPF_SK_SKB_VERDICT},
};

enum bpf_attach_type ArgAttachType(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() > i && info[i].IsNumber())
    return static_cast<enum bpf_attach_type>(info[i].As<Napi::Number>().Uint32Value());
  std::string name = ArgString(info, i, "attachType");
  for (const auto& t : kAttachTypes)
    if (name == t.name) return t.type;
  throw Napi::TypeError::New(info.Env(), "unknown attach type " + name);
}

std::string Hex(const uint8_t* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; i++) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

}  // namespace

Napi::Value AttachTypes(Napi::Env env) {
  Napi::Object out = Napi::Object::New(env);
  for (const auto& t : kAttachTypes) out.Set(t.name, Napi::Number::New(env, t.type));
  return out;
}

Napi::Value AttachCgroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int prog_fd = ArgFd(info, 0, "progFd");
  std::string path = ArgString(info, 1, "cgroupPath");
  enum bpf_attach_type type = ArgAttachType(info, 2);

  int cg = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) ThrowErrno(env, "open cgroup", errno, path);
  int fd = bpf_link_create(prog_fd, cg, type, nullptr);
  int err = errno;
  close(cg);
  if (fd < 0) ThrowErrno(env, "bpf_link_create", err, path);
  return Napi::Number::New(env, fd);
}

Napi::Value AttachMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int prog_fd = ArgFd(info, 0, "progFd");
  int map_fd = ArgFd(info, 1, "mapFd");
  enum bpf_attach_type type = ArgAttachType(info, 2);
  // Attached to the map itself (no link): it lasts as long as the map, and a second attach
  // replaces the program.
  if (bpf_prog_attach(prog_fd, map_fd, type, 0)) ThrowErrno(env, "bpf_prog_attach", errno);
  return env.Undefined();
}

Napi::Value Pin(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  std::string path = ArgString(info, 1, "path");
  if (bpf_obj_pin(fd, path.c_str())) ThrowErrno(info.Env(), "bpf_obj_pin", errno, path);
  return info.Env().Undefined();
}

Napi::Value OpenPin(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "path");
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) ThrowErrno(info.Env(), "bpf_obj_get", errno, path);
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value Unpin(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "path");
  if (unlink(path.c_str())) {
    if (errno == ENOENT) return Napi::Boolean::New(info.Env(), false);
    ThrowErrno(info.Env(), "unlink", errno, path);
  }
  return Napi::Boolean::New(info.Env(), true);
}

Napi::Value LinkUpdate(const Napi::CallbackInfo& info) {
  int link_fd = ArgFd(info, 0, "linkFd");
  int prog_fd = ArgFd(info, 1, "progFd");
  if (bpf_link_update(link_fd, prog_fd, nullptr))
    ThrowErrno(info.Env(), "bpf_link_update", errno);
  return info.Env().Undefined();
}

Napi::Value LinkDetach(const Napi::CallbackInfo& info) {
  int link_fd = ArgFd(info, 0, "linkFd");
  if (bpf_link_detach(link_fd)) ThrowErrno(info.Env(), "bpf_link_detach", errno);
  return info.Env().Undefined();
}

Napi::Value LinkInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "linkFd");
  struct bpf_link_info li;
  memset(&li, 0, sizeof(li));
  __u32 len = sizeof(li);
  if (bpf_obj_get_info_by_fd(fd, &li, &len)) ThrowErrno(env, "bpf_obj_get_info_by_fd", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", Napi::Number::New(env, li.id));
  out.Set("progId", Napi::Number::New(env, li.prog_id));
  out.Set("type", Napi::Number::New(env, li.type));
  if (li.type == BPF_LINK_TYPE_CGROUP) {
    // cgroup_id is 0 once the cgroup is gone: the link is defunct ("auto-detached").
    out.Set("cgroupId", Napi::BigInt::New(env, static_cast<uint64_t>(li.cgroup.cgroup_id)));
    out.Set("attachType", Napi::Number::New(env, li.cgroup.attach_type));
  }
  return out;
}

Napi::Value ProgInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "progFd");
  struct bpf_prog_info pi;
  memset(&pi, 0, sizeof(pi));
  __u32 len = sizeof(pi);
  if (bpf_obj_get_info_by_fd(fd, &pi, &len)) ThrowErrno(env, "bpf_obj_get_info_by_fd", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("id", Napi::Number::New(env, pi.id));
  out.Set("name", Napi::String::New(env, pi.name));
  out.Set("type", Napi::Number::New(env, pi.type));
  out.Set("tag", Napi::String::New(env, Hex(pi.tag, sizeof(pi.tag))));
  return out;
}

Napi::Value CloseFd(const Napi::CallbackInfo& info) {
  int fd = ArgFd(info, 0, "fd");
  if (close(fd)) ThrowErrno(info.Env(), "close", errno);
  return info.Env().Undefined();
}

Napi::Value MountBpffs(const Napi::CallbackInfo& info) {
  std::string path = ArgString(info, 0, "path");
  // mode=0700: what systemd uses; pins are for root (the agent) only.
  if (mount("bpf", path.c_str(), "bpf", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0700"))
    ThrowErrno(info.Env(), "mount bpf", errno, path);
  return info.Env().Undefined();
}

}  // namespace weft
