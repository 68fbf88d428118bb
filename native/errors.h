// Errors thrown to JavaScript: every failure carries errno, its symbolic code (EPERM) and
// the operation, which src/capture/bpf.ts turns into a BpfError.
#pragma once

#include <napi.h>
#include <string>

namespace weft {

// Throws a JS Error with .errno, .code, .op and, when given, .detail.
[[noreturn]] void ThrowErrno(Napi::Env env, const std::string& op, int err,
                             const std::string& detail = "");

// libbpf output (warnings, verifier logs) of the current operation: cleared before an
// operation, attached as .detail when it fails.
void LogReset();
std::string LogTail(size_t max = 8192);
void InstallLibbpfLogger();

// Argument helpers: throw TypeError (not an errno error) on misuse.
int ArgFd(const Napi::CallbackInfo& info, size_t i, const char* what);
std::string ArgString(const Napi::CallbackInfo& info, size_t i, const char* what);
Napi::Buffer<uint8_t> ArgBuffer(const Napi::CallbackInfo& info, size_t i, const char* what);

}  // namespace weft
