#include "splice.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "map.h"
#include "weft.h"

namespace weft {

namespace {

// What the private epoll set watches: FIN (EPOLLRDHUP) until it came, then only errors and
// hang-up, which epoll reports whatever the mask. Never EPOLLIN: the kernel wakes a socket's
// readers with an EPOLLIN key on every skb it redirects, and epoll skips keyed wake-ups that
// the mask does not ask for, so the agent's thread sleeps through the traffic. One-shot, so a
// condition that stays true (a FIN, an error) is reported once until JS re-arms the socket.
constexpr uint32_t kWatchFin = EPOLLRDHUP | EPOLLONESHOT;
constexpr uint32_t kWatchEnd = EPOLLONESHOT;

int DupFd(int fd) { return fcntl(fd, F_DUPFD_CLOEXEC, 3); }

uint64_t EpollData(uint32_t id, int side) { return (static_cast<uint64_t>(id) << 1) | static_cast<uint64_t>(side); }

// Bytes the socket has taken into its send queue so far, counted from an arbitrary origin:
// acknowledged bytes (TCP_INFO) plus what is queued and unacknowledged (SIOCOUTQ). Read in this
// order, an ACK between the two calls makes the sum smaller, never larger, so "everything
// was written" is never concluded too early.
//
// glibc's struct tcp_info (which uv.h pulls in, so <linux/tcp.h> cannot be included) stops at
// tcpi_total_retrans; the kernel's goes on with tcpi_pacing_rate, tcpi_max_pacing_rate, then
// tcpi_bytes_acked (Linux 4.1), at a fixed offset of the uapi struct.
struct KernelTcpInfo {
  struct tcp_info glibc;
  uint64_t pacing_rate;
  uint64_t max_pacing_rate;
  uint64_t bytes_acked;
  uint8_t rest[256];  // later fields, whatever the running kernel adds
};
static_assert(offsetof(struct tcp_info, tcpi_total_retrans) == 100, "struct tcp_info prefix");
static_assert(offsetof(KernelTcpInfo, bytes_acked) == 120, "tcpi_bytes_acked offset of the uapi struct tcp_info");

int Written(int fd, uint64_t* out) {
  KernelTcpInfo ti;
  memset(&ti, 0, sizeof(ti));
  socklen_t len = sizeof(ti);
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len)) return errno;
  if (len < offsetof(KernelTcpInfo, bytes_acked) + sizeof(ti.bytes_acked)) return ENOTSUP;
  int outq = 0;
  if (ioctl(fd, SIOCOUTQ, &outq)) return errno;
  *out = ti.bytes_acked + static_cast<uint64_t>(outq < 0 ? 0 : outq);
  return 0;
}

int Cookie(int fd, uint64_t* out) {
  socklen_t len = sizeof(*out);
  if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, out, &len)) return errno;
  return 0;
}

}  // namespace

Napi::Function Splicer::Init(Napi::Env env) {
  return DefineClass(env, "Splicer",
                     {
                         InstanceMethod<&Splicer::Add>("add"),
                         InstanceMethod<&Splicer::Bytes>("bytes"),
                         InstanceMethod<&Splicer::Unsent>("unsent"),
                         InstanceMethod<&Splicer::Shutdown>("shutdown"),
                         InstanceMethod<&Splicer::Arm>("arm"),
                         InstanceMethod<&Splicer::SocketError>("socketError"),
                         InstanceMethod<&Splicer::Remove>("remove"),
                         InstanceMethod<&Splicer::Close>("close"),
                         InstanceAccessor<&Splicer::GetSize>("size"),
                     });
}

Splicer::Splicer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Splicer>(info) {
  Napi::Env env = info.Env();
  MapHandle* maps[3];
  const char* names[3] = {"inMap", "outMap", "peerMap"};
  for (size_t i = 0; i < 3; i++) {
    maps[i] = info.Length() > i ? MapHandle::Unwrap(info[i]) : nullptr;
    if (!maps[i]) throw Napi::TypeError::New(env, std::string("Splicer: ") + names[i] + " must be a MapHandle");
  }
  if (info.Length() < 4 || !info[3].IsFunction()) throw Napi::TypeError::New(env, "Splicer: onEvents must be a function");
  if (maps[2]->key_size() != sizeof(uint64_t) || maps[2]->value_size() != sizeof(struct weft_splice_val))
    throw Napi::TypeError::New(env, "Splicer: peerMap is not a weft_spl_peer map");

  int* fds[3] = {&in_fd_, &out_fd_, &peer_fd_};
  for (size_t i = 0; i < 3; i++) {
    *fds[i] = DupFd(maps[i]->Fd(env, "Splicer"));
    if (*fds[i] < 0) {
      int err = errno;
      Shut();
      ThrowErrno(env, "dup", err, names[i]);
    }
  }
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    int err = errno;
    Shut();
    ThrowErrno(env, "epoll_create1", err);
  }
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || !loop) {
    Shut();
    ThrowErrno(env, "napi_get_uv_event_loop", EINVAL);
  }
  poll_ = new uv_poll_t;
  int rc = uv_poll_init(loop, poll_, epfd_);
  if (rc == 0) {
    poll_->data = this;
    rc = uv_poll_start(poll_, UV_READABLE, [](uv_poll_t* h, int, int) { static_cast<Splicer*>(h->data)->Deliver(); });
  }
  if (rc != 0) {
    delete poll_;  // uv_poll_init failing leaves nothing to close
    poll_ = nullptr;
    Shut();
    ThrowErrno(env, "uv_poll_start", -rc);
  }
  // Nothing to wait for while nothing is spliced: the poll must not keep the loop alive.
  uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
  on_events_ = Napi::Persistent(info[3].As<Napi::Function>());
  async_ = std::make_unique<Napi::AsyncContext>(env, "weft:splice");
}

Splicer::~Splicer() { Shut(); }

// Releases every pair and every fd; idempotent. The uv handle is freed by its close callback.
void Splicer::Shut() {
  for (auto& [id, p] : pairs_) {
    Unmap(p);
    Release(p);
  }
  pairs_.clear();
  if (poll_) {
    uv_poll_stop(poll_);
    poll_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
  }
  for (int* fd : {&epfd_, &in_fd_, &out_fd_, &peer_fd_}) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
  }
}

void Splicer::UpdateRef() {
  if (!poll_) return;
  bool want = !pairs_.empty();
  if (want == refed_) return;
  refed_ = want;
  if (want)
    uv_ref(reinterpret_cast<uv_handle_t*>(poll_));
  else
    uv_unref(reinterpret_cast<uv_handle_t*>(poll_));
}

uint64_t Splicer::Moved(uint64_t cookie) const {
  struct weft_splice_val v;
  if (bpf_map_lookup_elem(peer_fd_, &cookie, &v)) return 0;
  return v.bytes;
}

// Out of the maps: first weft_spl_in (the verdict stops; later bytes stay on the socket), then
// the targets and the pairing.
void Splicer::Unmap(const Pair& p) {
  if (in_fd_ < 0) return;
  for (int i = 0; i < 2; i++)
    if (p.cookie[i]) bpf_map_delete_elem(in_fd_, &p.cookie[i]);
  for (int i = 0; i < 2; i++) {
    if (!p.cookie[i]) continue;
    bpf_map_delete_elem(out_fd_, &p.cookie[i]);
    bpf_map_delete_elem(peer_fd_, &p.cookie[i]);
  }
}

void Splicer::Release(Pair& p) {
  for (int i = 0; i < 2; i++) {
    if (p.fd[i] < 0) continue;
    if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, p.fd[i], nullptr);
    close(p.fd[i]);
    p.fd[i] = -1;
  }
}

Napi::Value Splicer::Add(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int src[2] = {ArgFd(info, 0, "fdA"), ArgFd(info, 1, "fdB")};
  if (epfd_ < 0) ThrowErrno(env, "splice", EBADF, "the splicer is closed");
  uint32_t id = next_id_++;
  if (next_id_ == 0) next_id_ = 1;
  Pair p;
  std::string op;
  int err = 0;
  bool mapped = false;
  for (int i = 0; i < 2 && !err; i++) {
    p.fd[i] = DupFd(src[i]);
    if (p.fd[i] < 0) err = errno, op = "dup";
    else if ((err = Cookie(p.fd[i], &p.cookie[i]))) op = "getsockopt SO_COOKIE";
    else if ((err = Written(p.fd[i], &p.base[i]))) op = "TCP_INFO";
  }
  if (!err) {
    mapped = true;
    // Order matters. A socket's verdict runs as soon as it is in weft_spl_in, and redirects to
    // its peer in weft_spl_out: so both targets and both pairings go in before either socket
    // enters weft_spl_in. (With one map, bytes arriving on the first socket before the second
    // is in would be dropped: the redirect finds no target.)
    for (int i = 0; i < 2 && !err; i++) {
      uint64_t fd = static_cast<uint64_t>(p.fd[i]);
      if (bpf_map_update_elem(out_fd_, &p.cookie[i], &fd, BPF_NOEXIST)) err = errno, op = "weft_spl_out update";
    }
    for (int i = 0; i < 2 && !err; i++) {
      struct weft_splice_val v = {p.cookie[1 - i], 0};
      if (bpf_map_update_elem(peer_fd_, &p.cookie[i], &v, BPF_NOEXIST)) err = errno, op = "weft_spl_peer update";
    }
    for (int i = 0; i < 2 && !err; i++) {
      uint64_t fd = static_cast<uint64_t>(p.fd[i]);
      if (bpf_map_update_elem(in_fd_, &p.cookie[i], &fd, BPF_NOEXIST)) err = errno, op = "weft_spl_in update";
    }
  }
  for (int i = 0; i < 2 && !err; i++) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = kWatchFin;
    ev.data.u64 = EpollData(id, i);
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, p.fd[i], &ev)) err = errno, op = "epoll_ctl";
  }
  if (err) {
    if (mapped) Unmap(p);
    Release(p);
    ThrowErrno(env, "splice: " + op, err);
  }
  // Bytes that reached a socket before it entered weft_spl_in wait on its receive queue, and
  // nothing runs the verdict on them until more arrive (which, for a request waiting for its
  // answer, is never). Setting SO_RCVLOWAT makes TCP call data_ready now (tcp_set_rcvlowat ->
  // tcp_data_ready), which is the verdict's entry point. 1 is the default value: no change.
  for (int i = 0; i < 2; i++) {
    int one = 1;
    setsockopt(p.fd[i], SOL_SOCKET, SO_RCVLOWAT, &one, sizeof(one));
  }
  pairs_.emplace(id, p);
  UpdateRef();
  return Napi::Number::New(env, id);
}

Splicer::Pair& Splicer::Get(Napi::Env env, const Napi::CallbackInfo& info, const char* op) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, std::string(op) + ": id must be a number");
  auto it = pairs_.find(info[0].As<Napi::Number>().Uint32Value());
  if (it == pairs_.end()) ThrowErrno(env, op, ENOENT, "no such splice");
  return it->second;
}

int Splicer::Side(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), "side must be 0 or 1");
  int side = info[i].As<Napi::Number>().Int32Value();
  if (side != 0 && side != 1) throw Napi::TypeError::New(info.Env(), "side must be 0 or 1");
  return side;
}

Napi::Value Splicer::Bytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pair& p = Get(env, info, "bytes");
  Napi::Array out = Napi::Array::New(env, 2);
  for (uint32_t i = 0; i < 2; i++) out.Set(i, Napi::Number::New(env, static_cast<double>(Moved(p.cookie[i]))));
  return out;
}

Napi::Value Splicer::Unsent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pair& p = Get(env, info, "unsent");
  int side = Side(info, 1);
  uint64_t written = 0;
  int err = Written(p.fd[side], &written);
  if (err) ThrowErrno(env, "unsent", err);
  double moved = static_cast<double>(Moved(p.cookie[1 - side]));
  return Napi::Number::New(env, moved - static_cast<double>(written - p.base[side]));
}

Napi::Value Splicer::Shutdown(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pair& p = Get(env, info, "shutdown");
  int side = Side(info, 1);
  return Napi::Number::New(env, shutdown(p.fd[side], SHUT_WR) ? errno : 0);
}

Napi::Value Splicer::Arm(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pair& p = Get(env, info, "arm");
  int side = Side(info, 1);
  bool fin = info.Length() > 2 && info[2].ToBoolean();
  struct epoll_event ev;
  memset(&ev, 0, sizeof(ev));
  ev.events = fin ? kWatchFin : kWatchEnd;
  ev.data.u64 = EpollData(info[0].As<Napi::Number>().Uint32Value(), side);
  if (epoll_ctl(epfd_, EPOLL_CTL_MOD, p.fd[side], &ev)) ThrowErrno(env, "epoll_ctl", errno);
  return env.Undefined();
}

Napi::Value Splicer::SocketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Pair& p = Get(env, info, "socketError");
  int side = Side(info, 1);
  int soerr = 0;
  socklen_t len = sizeof(soerr);
  if (getsockopt(p.fd[side], SOL_SOCKET, SO_ERROR, &soerr, &len)) soerr = errno;
  return Napi::Number::New(env, soerr);
}

Napi::Value Splicer::Remove(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "remove: id must be a number");
  auto it = pairs_.find(info[0].As<Napi::Number>().Uint32Value());
  if (it == pairs_.end()) return env.Null();
  Pair& p = it->second;
  // Out of weft_spl_in first: the counters are final once no verdict runs on either socket.
  for (int i = 0; i < 2; i++) bpf_map_delete_elem(in_fd_, &p.cookie[i]);
  Napi::Array out = Napi::Array::New(env, 2);
  for (uint32_t i = 0; i < 2; i++) out.Set(i, Napi::Number::New(env, static_cast<double>(Moved(p.cookie[i]))));
  Unmap(p);
  Release(p);
  pairs_.erase(it);
  UpdateRef();
  return out;
}

Napi::Value Splicer::Close(const Napi::CallbackInfo& info) {
  Shut();
  return info.Env().Undefined();
}

Napi::Value Splicer::GetSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(pairs_.size()));
}

// The epoll set is readable: collect every ready socket and hand the batch to JS as
// [id, side, events, id, side, events, ...].
void Splicer::Deliver() {
  if (epfd_ < 0) return;
  std::vector<uint32_t> flat;
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(epfd_, evs, 64, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (int i = 0; i < n; i++) {
      uint64_t d = evs[i].data.u64;
      flat.push_back(static_cast<uint32_t>(d >> 1));
      flat.push_back(static_cast<uint32_t>(d & 1));
      flat.push_back(evs[i].events);
    }
    if (n < 64) break;
  }
  if (flat.empty()) return;
  Napi::Env env = Env();
  Napi::HandleScope scope(env);
  Napi::Uint32Array arr = Napi::Uint32Array::New(env, flat.size());
  memcpy(arr.Data(), flat.data(), flat.size() * sizeof(uint32_t));
  try {
    on_events_.MakeCallback(env.Global(), {arr}, *async_);
  } catch (const Napi::Error& e) {
    // Out of any JS call: report it as Node reports an exception thrown from a callback.
    napi_fatal_exception(env, e.Value());
  }
}

}  // namespace weft
