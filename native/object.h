// BpfObject: one bpf_object (an ELF file of programs and maps). It owns the program and map
// fds libbpf opens; close() or the garbage collector releases them. Maps pinned by name are
// reused from pinRoot, so several objects and successive agents share them.
#pragma once

#include <napi.h>

struct bpf_object;

namespace weft {

class BpfObject : public Napi::ObjectWrap<BpfObject> {
 public:
  static Napi::Function Init(Napi::Env env);
  explicit BpfObject(const Napi::CallbackInfo& info);  // (path, pinRoot?)
  ~BpfObject() override;

 private:
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value ProgramFd(const Napi::CallbackInfo& info);
  Napi::Value ProgramNames(const Napi::CallbackInfo& info);
  Napi::Value MapFd(const Napi::CallbackInfo& info);
  Napi::Value MapNames(const Napi::CallbackInfo& info);
  Napi::Value MapInfo(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  bpf_object* Obj(Napi::Env env, const char* op);

  bpf_object* obj_ = nullptr;
  bool loaded_ = false;
};

}  // namespace weft
