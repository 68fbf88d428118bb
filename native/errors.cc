#include "errors.h"

#include <bpf/libbpf.h>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace weft {

namespace {

// libbpf's print callback is process-global; the addon runs on the JS thread only.
std::string g_log;
constexpr size_t kLogCap = 256 * 1024;

int LibbpfPrint(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  char buf[4096];
  int n = vsnprintf(buf, sizeof(buf), fmt, args);
  if (n < 0) return n;
  g_log.append(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1));
  if (g_log.size() > kLogCap) g_log.erase(0, g_log.size() - kLogCap);
  return n;
}

}  // namespace

void InstallLibbpfLogger() { libbpf_set_print(LibbpfPrint); }

void LogReset() { g_log.clear(); }

std::string LogTail(size_t max) {
  if (g_log.size() <= max) return g_log;
  return "..." + g_log.substr(g_log.size() - max);
}

void ThrowErrno(Napi::Env env, const std::string& op, int err, const std::string& detail) {
  if (err < 0) err = -err;
  if (err == 0) err = EINVAL;  // a failure must never read as success
  const char* name = strerrorname_np(err);
  std::string code = name ? name : ("E" + std::to_string(err));
  std::string msg = op + " failed: " + code + " (errno " + std::to_string(err) + ")";
  if (!detail.empty()) msg += ": " + detail;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, code));
  e.Set("op", Napi::String::New(env, op));
  if (!detail.empty()) e.Set("detail", Napi::String::New(env, detail));
  throw e;
}

int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber())
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a file descriptor");
  int fd = info[i].As<Napi::Number>().Int32Value();
  if (fd < 0) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be >= 0");
  return fd;
}

std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString())
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  return info[i].As<Napi::String>().Utf8Value();
}

Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer())
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a Buffer");
  return info[i].As<Napi::Buffer<uint8_t>>();
}

}  // namespace weft
