#include "object.h"

#include <bpf/libbpf.h>
#include <cerrno>

#include "errors.h"

namespace weft {

Napi::Function BpfObject::Init(Napi::Env env) {
  return DefineClass(env, "BpfObject",
                     {
                         InstanceMethod<&BpfObject::Load>("load"),
                         InstanceMethod<&BpfObject::ProgramFd>("programFd"),
                         InstanceMethod<&BpfObject::ProgramNames>("programNames"),
                         InstanceMethod<&BpfObject::MapFd>("mapFd"),
                         InstanceMethod<&BpfObject::MapNames>("mapNames"),
                         InstanceMethod<&BpfObject::MapInfo>("mapInfo"),
                         InstanceMethod<&BpfObject::Close>("close"),
                     });
}

BpfObject::BpfObject(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BpfObject>(info) {
  std::string path = ArgString(info, 0, "path");
  std::string pin_root;
  if (info.Length() > 1 && !info[1].IsUndefined() && !info[1].IsNull())
    pin_root = ArgString(info, 1, "pinRoot");

  LIBBPF_OPTS(bpf_object_open_opts, opts);
  if (!pin_root.empty()) opts.pin_root_path = pin_root.c_str();
  LogReset();
  obj_ = bpf_object__open_file(path.c_str(), &opts);
  if (!obj_) {
    int err = errno;
    obj_ = nullptr;
    ThrowErrno(info.Env(), "bpf_object__open_file", err, path + "\n" + LogTail());
  }
}

BpfObject::~BpfObject() {
  if (obj_) bpf_object__close(obj_);
}

bpf_object* BpfObject::Obj(Napi::Env env, const char* op) {
  if (!obj_) ThrowErrno(env, op, EBADF, "object is closed");
  return obj_;
}

Napi::Value BpfObject::Load(const Napi::CallbackInfo& info) {
  bpf_object* obj = Obj(info.Env(), "bpf_object__load");
  LogReset();
  int err = bpf_object__load(obj);
  if (err) {
    // The verifier log or the pinned-map mismatch is in libbpf's output.
    ThrowErrno(info.Env(), "bpf_object__load", err,
               std::string(bpf_object__name(obj)) + "\n" + LogTail());
  }
  loaded_ = true;
  return info.Env().Undefined();
}

Napi::Value BpfObject::ProgramFd(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  bpf_object* obj = Obj(info.Env(), "programFd");
  bpf_program* prog = bpf_object__find_program_by_name(obj, name.c_str());
  if (!prog) ThrowErrno(info.Env(), "programFd", ENOENT, "no program " + name);
  int fd = bpf_program__fd(prog);
  if (fd < 0) ThrowErrno(info.Env(), "programFd", fd, name + " is not loaded");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value BpfObject::ProgramNames(const Napi::CallbackInfo& info) {
  bpf_object* obj = Obj(info.Env(), "programNames");
  Napi::Array out = Napi::Array::New(info.Env());
  bpf_program* prog;
  uint32_t i = 0;
  bpf_object__for_each_program(prog, obj) {
    out.Set(i++, Napi::String::New(info.Env(), bpf_program__name(prog)));
  }
  return out;
}

Napi::Value BpfObject::MapFd(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  bpf_object* obj = Obj(info.Env(), "mapFd");
  bpf_map* map = bpf_object__find_map_by_name(obj, name.c_str());
  if (!map) ThrowErrno(info.Env(), "mapFd", ENOENT, "no map " + name);
  int fd = bpf_map__fd(map);
  if (fd < 0) ThrowErrno(info.Env(), "mapFd", fd, name + " is not loaded");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value BpfObject::MapNames(const Napi::CallbackInfo& info) {
  bpf_object* obj = Obj(info.Env(), "mapNames");
  Napi::Array out = Napi::Array::New(info.Env());
  bpf_map* map;
  uint32_t i = 0;
  bpf_object__for_each_map(map, obj) {
    out.Set(i++, Napi::String::New(info.Env(), bpf_map__name(map)));
  }
  return out;
}

// Valid before load(): the sizes come from the object's BTF map definitions.
Napi::Value BpfObject::MapInfo(const Napi::CallbackInfo& info) {
  std::string name = ArgString(info, 0, "name");
  bpf_object* obj = Obj(info.Env(), "mapInfo");
  bpf_map* map = bpf_object__find_map_by_name(obj, name.c_str());
  if (!map) ThrowErrno(info.Env(), "mapInfo", ENOENT, "no map " + name);
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("type", Napi::Number::New(info.Env(), bpf_map__type(map)));
  out.Set("keySize", Napi::Number::New(info.Env(), bpf_map__key_size(map)));
  out.Set("valueSize", Napi::Number::New(info.Env(), bpf_map__value_size(map)));
  out.Set("maxEntries", Napi::Number::New(info.Env(), bpf_map__max_entries(map)));
  out.Set("pinPath", bpf_map__pin_path(map)
                         ? Napi::Value(Napi::String::New(info.Env(), bpf_map__pin_path(map)))
                         : info.Env().Null());
  return out;
}

Napi::Value BpfObject::Close(const Napi::CallbackInfo& info) {
  if (obj_) {
    bpf_object__close(obj_);
    obj_ = nullptr;
  }
  return info.Env().Undefined();
}

}  // namespace weft
