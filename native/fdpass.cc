#include "fdpass.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"

namespace weft {

namespace {

// A handover carries the lock and a handful of listeners; more is a protocol error.
constexpr size_t kMaxFds = 32;

}  // namespace

Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = ArgString(info, 0, "path");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) ThrowErrno(env, "connect", ENAMETOOLONG, path);
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowErrno(env, "socket", errno, path);
  int rc;
  do rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno;
    close(fd);
    ThrowErrno(env, "connect", err, path);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value SendFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = ArgFd(info, 0, "sockFd");
  Napi::Buffer<uint8_t> data = ArgBuffer(info, 1, "data");
  if (info.Length() < 3 || !info[2].IsArray()) throw Napi::TypeError::New(env, "fds must be an array");
  Napi::Array arr = info[2].As<Napi::Array>();
  if (arr.Length() > kMaxFds) throw Napi::RangeError::New(env, "too many fds");
  if (data.Length() == 0) throw Napi::RangeError::New(env, "data must not be empty (the fds ride on its first byte)");
  std::vector<int> fds;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value v = arr.Get(i);
    if (!v.IsNumber() || v.As<Napi::Number>().Int32Value() < 0) throw Napi::TypeError::New(env, "fds must be file descriptors");
    fds.push_back(v.As<Napi::Number>().Int32Value());
  }
  iovec iov{data.Data(), data.Length()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "sendmsg", errno);
  return Napi::Number::New(env, static_cast<double>(n));
}

Napi::Value RecvFds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int sock = ArgFd(info, 0, "sockFd");
  uint32_t max = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 65536;
  int timeout = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  pollfd p{sock, POLLIN, 0};
  int rc;
  do rc = poll(&p, 1, timeout);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) ThrowErrno(env, "poll", errno);
  if (rc == 0) ThrowErrno(env, "recvmsg", ETIMEDOUT, "no answer within " + std::to_string(timeout) + " ms");
  std::vector<uint8_t> buf(max ? max : 1);
  iovec iov{buf.data(), buf.size()};
  std::vector<char> control(CMSG_SPACE(sizeof(int) * kMaxFds));
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t n;
  do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) ThrowErrno(env, "recvmsg", errno);
  Napi::Array fds = Napi::Array::New(env);
  uint32_t k = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const int* got = reinterpret_cast<const int*>(CMSG_DATA(c));
    for (size_t i = 0; i < count; i++) fds.Set(k++, Napi::Number::New(env, got[i]));
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    // Some fds were dropped by the kernel: the handover is unusable. Close what came.
    for (uint32_t i = 0; i < k; i++) close(fds.Get(i).As<Napi::Number>().Int32Value());
    ThrowErrno(env, "recvmsg", EMSGSIZE, "control data truncated (too many fds)");
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.data(), static_cast<size_t>(n)));
  out.Set("fds", fds);
  return out;
}

Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int rc;
  do rc = flock(fd, LOCK_EX | LOCK_NB);
  while (rc < 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  ThrowErrno(env, "flock", errno);
}

Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "sockFd");
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) ThrowErrno(env, "getsockopt SO_PEERCRED", errno);
  Napi::Object out = Napi::Object::New(env);
  out.Set("pid", Napi::Number::New(env, cred.pid));
  out.Set("uid", Napi::Number::New(env, cred.uid));
  out.Set("gid", Napi::Number::New(env, cred.gid));
  return out;
}

Napi::Value DupFd(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = ArgFd(info, 0, "fd");
  int out = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (out < 0) ThrowErrno(env, "dup", errno);
  return Napi::Number::New(env, out);
}

}  // namespace weft
