// The N-API front end: a small, C-style surface over the op registry.
//   fromData(typed, shape, dtype, device?)  -> NativeTensor
//   run(op, inputs, attrs)                  -> NativeTensor[]   (queued on the stream)
//   view(t, shape)                          -> NativeTensor     (same storage)
//   sync()                                  -> Promise<void>    (never rejects)
//   NativeTensor#read()                     -> Promise<TypedArray> (rejects with the error of
//                                              the op that failed to produce it, if one did)
// Every native exception becomes a JS TypeError / RangeError / Error here.
#include <napi.h>

#include <cstring>
#include <memory>

#include "../core/env.h"
#include "../core/registry.h"
#include "../core/stream.h"
#include "../cpu/qgemm.h"
#include "../cuda/cuda_memory.h"
#include "../dist/comm.h"

namespace {

using tdq::DType;
using tdq::Tensor;

// Per-environment state, so the addon works in worker_threads.
struct EnvData {
  std::shared_ptr<tdq::MemoryCounter> counter = std::make_shared<tdq::MemoryCounter>();
  std::unique_ptr<tdq::Stream> stream;
  Napi::FunctionReference tensor_ctor;
  int64_t reported = 0;  // bytes already reported to V8
};

EnvData& env_data(Napi::Env env) { return *env.GetInstanceData<EnvData>(); }

// V8 cannot be told about frees that happen on the stream thread, so the
// drift is reconciled at every call from JS.
void report_memory(Napi::Env env) {
  EnvData& d = env_data(env);
  int64_t live = d.counter->live.load();
  if (live != d.reported) {
    Napi::MemoryManagement::AdjustExternalMemory(env, live - d.reported);
    d.reported = live;
  }
}

[[noreturn]] void rethrow_as_js(Napi::Env env) {
  try {
    throw;
  } catch (const Napi::Error&) {
    throw;
  } catch (const tdq::Error& e) {
    if (e.kind == tdq::ErrorKind::Type) throw Napi::TypeError::New(env, e.what());
    if (e.kind == tdq::ErrorKind::Range) throw Napi::RangeError::New(env, e.what());
    throw Napi::Error::New(env, e.what());
  } catch (const std::bad_alloc&) {
    throw Napi::RangeError::New(env, "out of memory (std::bad_alloc)");
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  } catch (...) {
    throw Napi::Error::New(env, "unknown native error");
  }
}

Napi::Error js_error(Napi::Env env, const tdq::TensorError& e) {
  if (e.kind == tdq::ErrorKind::Type) return Napi::TypeError::New(env, e.message);
  if (e.kind == tdq::ErrorKind::Range) return Napi::RangeError::New(env, e.message);
  return Napi::Error::New(env, e.message);
}

template <typename F>
Napi::Value guarded(const Napi::CallbackInfo& info, F&& f) {
  try {
    Napi::Value v = f();
    report_memory(info.Env());
    return v;
  } catch (...) {
    rethrow_as_js(info.Env());
  }
}

napi_typedarray_type typed_array_type(DType t) {
  switch (t) {
    case DType::f32: return napi_float32_array;
    case DType::f16: return napi_uint16_array;  // raw binary16 bits
    case DType::i8: return napi_int8_array;
    case DType::u8: return napi_uint8_array;
    case DType::i32: return napi_int32_array;
  }
  return napi_float32_array;
}

const char* typed_array_name(DType t) {
  switch (t) {
    case DType::f32: return "Float32Array";
    case DType::f16: return "Uint16Array";
    case DType::i8: return "Int8Array";
    case DType::u8: return "Uint8Array";
    case DType::i32: return "Int32Array";
  }
  return "?";
}

Napi::Value make_typed_array(Napi::Env env, DType dtype, const void* src, size_t nbytes) {
  Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(env, nbytes);
  if (nbytes) std::memcpy(buf.Data(), src, nbytes);
  size_t n = nbytes / tdq::dtype_size(dtype);
  napi_value out;
  napi_status st = napi_create_typedarray(env, typed_array_type(dtype), n, buf, 0, &out);
  NAPI_THROW_IF_FAILED(env, st, Napi::Value());
  return Napi::Value(env, out);
}

tdq::Shape shape_from_js(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) tdq::fail(tdq::ErrorKind::Type, what, " must be an array of non-negative integers");
  Napi::Array a = v.As<Napi::Array>();
  tdq::Shape s;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0 && d == static_cast<double>(static_cast<int64_t>(d))))
      tdq::fail(tdq::ErrorKind::Type, what, "[", i, "] must be a non-negative integer");
    s.push_back(static_cast<int64_t>(d));
  }
  return s;
}

class NativeTensor : public Napi::ObjectWrap<NativeTensor> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeTensor",
                       {InstanceAccessor<&NativeTensor::Shape>("shape"),
                        InstanceAccessor<&NativeTensor::Dtype>("dtype"),
                        InstanceAccessor<&NativeTensor::DeviceName>("device"),
                        InstanceAccessor<&NativeTensor::Nbytes>("nbytes"),
                        InstanceAccessor<&NativeTensor::Disposed>("disposed"),
                        InstanceMethod<&NativeTensor::Dispose>("dispose"),
                        InstanceMethod<&NativeTensor::Read>("read"),
                        InstanceMethod<&NativeTensor::ReadSync>("readSync")});
  }

  explicit NativeTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeTensor>(info) {}

  static Napi::Object Wrap(Napi::Env env, Tensor t) {
    Napi::Object o = env_data(env).tensor_ctor.New({});
    Unwrap(o)->tensor_ = std::move(t);
    return o;
  }

  static const Tensor& From(const Napi::Value& v, const char* what) {
    if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(env_data(v.Env()).tensor_ctor.Value()))
      tdq::fail(tdq::ErrorKind::Type, what, " must be a NativeTensor");
    const Tensor& t = Unwrap(v.As<Napi::Object>())->tensor_;
    if (!t.defined()) tdq::fail(tdq::ErrorKind::Type, what, " has been disposed");
    return t;
  }

  // Drops this handle's reference; ops still queued keep the storage alive.
  // The finalizer does the same when the GC collects an undisposed handle.
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    return guarded(info, [&] {
      tensor_.storage.reset();
      return info.Env().Undefined();
    });
  }

  Napi::Value Read(const Napi::CallbackInfo& info);

  Napi::Value ReadSync(const Napi::CallbackInfo& info) {
    return guarded(info, [&]() -> Napi::Value {
      const Tensor& t = From(info.This(), "tensor");
      env_data(info.Env()).stream->wait();
      if (t.storage->error) throw js_error(info.Env(), *t.storage->error);
      if (t.device == tdq::Device::cpu) return make_typed_array(info.Env(), t.dtype, t.storage->data, t.nbytes());
      std::vector<uint8_t> host(t.nbytes());
      tdq::cuda_memcpy_d2h(host.data(), t.storage->data, host.size());
      return make_typed_array(info.Env(), t.dtype, host.data(), host.size());
    });
  }

 private:
  Napi::Value Shape(const Napi::CallbackInfo& info) {
    Napi::Array a = Napi::Array::New(info.Env(), tensor_.shape.size());
    for (size_t i = 0; i < tensor_.shape.size(); ++i)
      a.Set(static_cast<uint32_t>(i), Napi::Number::New(info.Env(), static_cast<double>(tensor_.shape[i])));
    return a;
  }
  Napi::Value Dtype(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), tdq::dtype_name(tensor_.dtype));
  }
  Napi::Value DeviceName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), tdq::device_name(tensor_.device));
  }
  Napi::Value Nbytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), tensor_.defined() ? static_cast<double>(tensor_.nbytes()) : 0);
  }
  Napi::Value Disposed(const Napi::CallbackInfo& info) {
    return Napi::Boolean::New(info.Env(), !tensor_.defined());
  }

  Tensor tensor_;
};

// Waits for the stream on a libuv worker thread, then copies the data out.
class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, tdq::Stream* stream, Tensor t)
      : Napi::AsyncWorker(env, "tdq.read"), deferred_(Napi::Promise::Deferred::New(env)),
        stream_(stream), tensor_(std::move(t)), seq_(stream->submitted()) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    stream_->wait_until(seq_);  // the op that writes the tensor is among the first seq_
    error_ = tensor_.storage->error;
    if (error_) {
      tensor_ = Tensor{};
      return;
    }
    try {
      try {
        host_.resize(tensor_.nbytes());
      } catch (const std::bad_alloc&) {
        error_ = std::make_shared<const tdq::TensorError>(tdq::TensorError{
            tdq::ErrorKind::Range, "read: out of memory: could not allocate " + std::to_string(tensor_.nbytes()) +
                                       " bytes for a copy of the tensor"});
        tensor_ = Tensor{};
        return;
      }
      if (tensor_.device == tdq::Device::cpu) {
        if (!host_.empty()) std::memcpy(host_.data(), tensor_.storage->data, host_.size());
      } else {
        tdq::cuda_memcpy_d2h(host_.data(), tensor_.storage->data, host_.size());
      }
    } catch (const std::exception& e) {
      SetError(e.what());
    }
    tensor_ = Tensor{};
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (error_) {
      deferred_.Reject(js_error(env, *error_).Value());
      return;
    }
    try {
      deferred_.Resolve(make_typed_array(env, dtype_, host_.data(), host_.size()));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  DType dtype_ = DType::f32;

 private:
  Napi::Promise::Deferred deferred_;
  tdq::Stream* stream_;
  Tensor tensor_;
  uint64_t seq_;
  std::vector<uint8_t> host_;
  std::shared_ptr<const tdq::TensorError> error_;
};

Napi::Value NativeTensor::Read(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Tensor& t = From(info.This(), "tensor");
    auto* w = new ReadWorker(info.Env(), env_data(info.Env()).stream.get(), t);
    w->dtype_ = t.dtype;
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  });
}

class SyncWorker : public Napi::AsyncWorker {
 public:
  SyncWorker(Napi::Env env, tdq::Stream* s)
      : Napi::AsyncWorker(env, "tdq.sync"), deferred_(Napi::Promise::Deferred::New(env)), stream_(s),
        seq_(s->submitted()) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  // Waits only: an op's error belongs to its outputs' readers, not to every sync().
  void Execute() override { stream_->wait_until(seq_); }
  void OnOK() override { deferred_.Resolve(Env().Undefined()); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  tdq::Stream* stream_;
  uint64_t seq_;
};

tdq::Attrs attrs_from_js(const Napi::Value& v, const std::string& op) {
  tdq::Attrs a;
  a.op = op;
  if (v.IsUndefined() || v.IsNull()) return a;
  if (!v.IsObject()) tdq::fail(tdq::ErrorKind::Type, op, ": attrs must be an object");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array keys = o.GetPropertyNames();
  for (uint32_t i = 0; i < keys.Length(); ++i) {
    std::string k = keys.Get(i).ToString().Utf8Value();
    Napi::Value x = o.Get(k);
    if (x.IsUndefined()) continue;
    if (x.IsNumber()) a.values[k] = x.As<Napi::Number>().DoubleValue();
    else if (x.IsBoolean()) a.values[k] = x.As<Napi::Boolean>().Value();
    else if (x.IsString()) a.values[k] = x.As<Napi::String>().Utf8Value();
    else if (x.IsArray()) {
      Napi::Array arr = x.As<Napi::Array>();
      std::vector<double> vals;
      for (uint32_t j = 0; j < arr.Length(); ++j) {
        Napi::Value e = arr.Get(j);
        if (!e.IsNumber()) tdq::fail(tdq::ErrorKind::Type, op, ": attribute '", k, "'[", j, "] must be a number");
        vals.push_back(e.As<Napi::Number>().DoubleValue());
      }
      a.values[k] = std::move(vals);
    } else {
      tdq::fail(tdq::ErrorKind::Type, op, ": attribute '", k, "' must be a number, boolean, string or array of numbers");
    }
  }
  return a;
}

Napi::Value FromData(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[2].IsString())
      tdq::fail(tdq::ErrorKind::Type, "fromData(data, shape, dtype[, device]): data must be a TypedArray and dtype a string");
    DType dtype = tdq::dtype_from_name(info[2].As<Napi::String>().Utf8Value());
    tdq::Device device = info.Length() > 3 && info[3].IsString()
                             ? tdq::device_from_name(info[3].As<Napi::String>().Utf8Value())
                             : tdq::Device::cpu;
    Napi::TypedArray ta = info[0].As<Napi::TypedArray>();
    if (ta.TypedArrayType() != typed_array_type(dtype))
      tdq::fail(tdq::ErrorKind::Type, "fromData: dtype ", tdq::dtype_name(dtype), " needs a ",
                typed_array_name(dtype));
    tdq::Shape shape = shape_from_js(info[1], "fromData: shape");
    if (static_cast<int64_t>(ta.ElementLength()) != tdq::shape_numel(shape))
      tdq::fail(tdq::ErrorKind::Range, "fromData: data has ", ta.ElementLength(), " elements but shape ",
                tdq::shape_str(shape), " needs ", tdq::shape_numel(shape));
    Tensor t = tdq::alloc_tensor(shape, dtype, device, env_data(env).counter);
    const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    if (device == tdq::Device::cpu) {
      if (t.nbytes()) std::memcpy(t.storage->data, src, t.nbytes());
    } else {
      tdq::cuda_memcpy_h2d(t.storage->data, src, t.nbytes());
    }
    return NativeTensor::Wrap(env, std::move(t));
  });
}

Napi::Value Run(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsArray())
      tdq::fail(tdq::ErrorKind::Type, "run(op, inputs, attrs): op must be a string and inputs an array");
    std::string op = info[0].As<Napi::String>().Utf8Value();
    Napi::Array ins = info[1].As<Napi::Array>();
    std::vector<Tensor> inputs;
    for (uint32_t i = 0; i < ins.Length(); ++i) {
      Napi::Value v = ins.Get(i);
      if (v.IsNull() || v.IsUndefined()) inputs.emplace_back();
      else {
        std::string what = op + ": input " + std::to_string(i);
        inputs.push_back(NativeTensor::From(v, what.c_str()));
      }
    }
    tdq::Attrs attrs = attrs_from_js(info.Length() > 2 ? info[2] : env.Undefined(), op);
    std::vector<Tensor> outs = env_data(env).stream->dispatch(op, std::move(inputs), std::move(attrs));
    Napi::Array result = Napi::Array::New(env, outs.size());
    for (size_t i = 0; i < outs.size(); ++i) result.Set(static_cast<uint32_t>(i), NativeTensor::Wrap(env, outs[i]));
    return result;
  });
}

Napi::Value View(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    const Tensor& t = NativeTensor::From(info[0], "view: tensor");
    tdq::Shape shape = shape_from_js(info[1], "view: shape");
    if (tdq::shape_numel(shape) != t.numel())
      tdq::fail(tdq::ErrorKind::Range, "view: cannot view shape ", tdq::shape_str(t.shape), " (", t.numel(),
                " elements) as ", tdq::shape_str(shape), " (", tdq::shape_numel(shape), " elements)");
    Tensor v = t;
    v.shape = shape;
    return NativeTensor::Wrap(info.Env(), std::move(v));
  });
}

Napi::Value Sync(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    auto* w = new SyncWorker(info.Env(), env_data(info.Env()).stream.get());
    Napi::Promise p = w->Promise();
    w->Queue();
    return p;
  });
}

Napi::Value SyncBlocking(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    env_data(info.Env()).stream->wait();
    return info.Env().Undefined();
  });
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    EnvData& d = env_data(env);
    Napi::Object o = Napi::Object::New(env);
    const auto& f = tdq::cpu_features();
    Napi::Object feats = Napi::Object::New(env);
    feats.Set("avx2", f.avx2);
    feats.Set("fma", f.fma);
    feats.Set("avx512f", f.avx512f);
    feats.Set("avx512bw", f.avx512bw);
    feats.Set("avx512vl", f.avx512vl);
    feats.Set("avx512vnni", f.avx512vnni);
    feats.Set("amxInt8", f.amx_int8);
    o.Set("cpuFeatures", feats);
    o.Set("cpuLevel", tdq::cpu_level_name(d.stream->cpu_level()));
    o.Set("bestCpuLevel", tdq::cpu_level_name(f.best()));
    o.Set("int8Kernel", tdq::qgemm_detail::qkernel_for(d.stream->cpu_level()).name);
    o.Set("threads", d.stream->threads());
    o.Set("maxQueuedBytes", static_cast<double>(d.stream->max_queued_bytes()));
    Napi::Array ops = Napi::Array::New(env);
    uint32_t i = 0;
    std::string why = tdq::cuda_probe();  // loads and probes libtdq_cuda.so once
    for (const auto& kv : tdq::op_registry()) {
      if (!kv.second.cpu && !kv.second.cuda) continue;
      Napi::Object op = Napi::Object::New(env);
      op.Set("name", kv.first);
      op.Set("cpu", static_cast<bool>(kv.second.cpu));
      // A CUDA kernel usable here (the dist ops' NCCL kernels are compiled in; they count once a device works).
      op.Set("cuda", static_cast<bool>(kv.second.cuda) && why.empty());
      ops.Set(i++, op);
    }
    o.Set("ops", ops);
    Napi::Object cuda = Napi::Object::New(env);
    cuda.Set("built", tdq::cuda_library_found());
    cuda.Set("buildInfo", tdq::cuda_build_info());
    cuda.Set("available", why.empty());
    cuda.Set("reason", why);
    if (why.empty()) {
      // What the library loaded of cuBLAS / cuDNN (or why not), and its options.
      // info() never throws: a library without the options (an older build) says so instead.
      try {
        Napi::Object opts = Napi::Object::New(env);
        for (const char* k : {"kernels", "precision", "int8"}) opts.Set(k, tdq::cuda_get_option(k));
        cuda.Set("libraries", tdq::cuda_get_option("libraries"));
        cuda.Set("options", opts);
      } catch (const std::exception& e) {
        cuda.Set("libraries", std::string("unknown (") + e.what() + ")");
      }
    }
    o.Set("cuda", cuda);
    // MPI: whether this build has it (data-parallel ranks); initialised only by dist_init.
    o.Set("mpi", Napi::Boolean::New(env, tdq::dist::mpi_built()));
    return o;
  });
}

Napi::Value Memory(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    EnvData& d = env_data(info.Env());
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("liveBytes", static_cast<double>(d.counter->live.load()));
    o.Set("peakBytes", static_cast<double>(d.counter->peak.load()));
    o.Set("cachedBytes", static_cast<double>(tdq::host_cache_bytes()));
    return o;
  });
}

// The CUDA backend's memory: null unless a device works (loads the backend on first use, as info() does).
Napi::Value CudaMemory(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    size_t allocated = 0, cached = 0, free = 0, total = 0;
    if (!tdq::cuda_memory_stats(&allocated, &cached, &free, &total)) return info.Env().Null();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("allocated", static_cast<double>(allocated));
    o.Set("cached", static_cast<double>(cached));
    o.Set("deviceFree", static_cast<double>(free));
    o.Set("deviceTotal", static_cast<double>(total));
    return o;
  });
}

Napi::Value ResetPeakMemory(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    EnvData& d = env_data(info.Env());
    d.counter->peak = d.counter->live.load();
    return info.Env().Undefined();
  });
}

Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    double n = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 0;
    if (!(n >= 1 && n <= 256 && n == static_cast<int>(n)))
      tdq::fail(tdq::ErrorKind::Range, "setThreads: threads must be an integer from 1 to 256");
    env_data(info.Env()).stream->set_threads(static_cast<int>(n));
    return info.Env().Undefined();
  });
}

// The CUDA library's run-time options (tdq_cuda_set_option): TypeError when no device works.
Napi::Value CudaSetOption(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString())
      tdq::fail(tdq::ErrorKind::Type, "cudaSetOption: expected (key: string, value: string)");
    tdq::cuda_set_option(info[0].As<Napi::String>().Utf8Value(), info[1].As<Napi::String>().Utf8Value());
    return info.Env().Undefined();
  });
}

Napi::Value CudaGetOption(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsString()) tdq::fail(tdq::ErrorKind::Type, "cudaGetOption: expected (key: string)");
    return Napi::String::New(info.Env(), tdq::cuda_get_option(info[0].As<Napi::String>().Utf8Value()));
  });
}

Napi::Value SetCpuLevel(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    if (info.Length() < 1 || !info[0].IsString())
      tdq::fail(tdq::ErrorKind::Type, "setCpuLevel: level must be 'scalar', 'avx2' or 'avx512'");
    env_data(info.Env()).stream->set_cpu_level(tdq::cpu_level_from_name(info[0].As<Napi::String>().Utf8Value()));
    return info.Env().Undefined();
  });
}

Napi::Value SetSynchronous(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    env_data(info.Env()).stream->set_synchronous(info.Length() > 0 && info[0].ToBoolean().Value());
    return info.Env().Undefined();
  });
}

Napi::Value SetMaxQueuedBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    double n = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    if (!(n >= 0 && n <= 9007199254740991.0 && n == static_cast<double>(static_cast<int64_t>(n))))
      tdq::fail(tdq::ErrorKind::Range, "setMaxQueuedBytes: bytes must be an integer >= 0");
    env_data(info.Env()).stream->set_max_queued_bytes(static_cast<size_t>(n));
    return info.Env().Undefined();
  });
}

Napi::Value SetHostCacheBytes(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    double n = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : -1;
    if (!(n >= 0 && n <= 9007199254740991.0 && n == static_cast<double>(static_cast<int64_t>(n))))
      tdq::fail(tdq::ErrorKind::Range, "setHostCacheBytes: bytes must be an integer >= 0 (0: no cache)");
    tdq::host_cache_set_cap(static_cast<size_t>(n));
    return info.Env().Undefined();
  });
}

Napi::Value ReleaseHostCache(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), static_cast<double>(tdq::host_cache_release()));
  });
}

Napi::Value SetProfiling(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    env_data(info.Env()).stream->set_profiling(info.Length() > 0 && info[0].ToBoolean().Value());
    return info.Env().Undefined();
  });
}

// { op: { calls, seconds } } since setProfiling(true); waits for the queue.
Napi::Value Profile(const Napi::CallbackInfo& info) {
  return guarded(info, [&]() -> Napi::Value {
    Napi::Object o = Napi::Object::New(info.Env());
    for (const auto& kv : env_data(info.Env()).stream->profile()) {
      Napi::Object e = Napi::Object::New(info.Env());
      e.Set("calls", static_cast<double>(kv.second.calls));
      e.Set("seconds", kv.second.seconds);
      o.Set(kv.first, e);
    }
    return o;
  });
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  tdq::EnvSettings settings;
  try {
    // A bad TDQ_* variable fails the require() with a RangeError naming it.
    settings = tdq::read_env_settings(tdq::ThreadPool::default_threads());
    // The cache is process-wide: a worker's load must not undo setHostCacheBytes().
    const char* cache_mb = std::getenv("TDQ_HOST_CACHE_MB");
    if (cache_mb && *cache_mb) tdq::host_cache_set_cap(settings.host_cache_bytes);
  } catch (...) {
    rethrow_as_js(env);
  }
  auto* d = new EnvData();
  d->stream = std::make_unique<tdq::Stream>(settings.threads, settings.cpu_level, d->counter);
  d->stream->set_max_queued_bytes(settings.max_queued_bytes);
  env.SetInstanceData<EnvData>(d);  // deleted (stream joined) when this environment ends
  Napi::Function ctor = NativeTensor::Define(env);
  d->tensor_ctor = Napi::Persistent(ctor);
  exports.Set("NativeTensor", ctor);
  exports.Set("fromData", Napi::Function::New(env, FromData));
  exports.Set("run", Napi::Function::New(env, Run));
  exports.Set("view", Napi::Function::New(env, View));
  exports.Set("sync", Napi::Function::New(env, Sync));
  exports.Set("syncBlocking", Napi::Function::New(env, SyncBlocking));
  exports.Set("info", Napi::Function::New(env, Info));
  exports.Set("memory", Napi::Function::New(env, Memory));
  exports.Set("resetPeakMemory", Napi::Function::New(env, ResetPeakMemory));
  exports.Set("cudaMemory", Napi::Function::New(env, CudaMemory));
  exports.Set("cudaSetOption", Napi::Function::New(env, CudaSetOption));
  exports.Set("cudaGetOption", Napi::Function::New(env, CudaGetOption));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("setCpuLevel", Napi::Function::New(env, SetCpuLevel));
  exports.Set("setSynchronous", Napi::Function::New(env, SetSynchronous));
  exports.Set("setProfiling", Napi::Function::New(env, SetProfiling));
  exports.Set("setMaxQueuedBytes", Napi::Function::New(env, SetMaxQueuedBytes));
  exports.Set("setHostCacheBytes", Napi::Function::New(env, SetHostCacheBytes));
  exports.Set("releaseHostCache", Napi::Function::New(env, ReleaseHostCache));
  exports.Set("profile", Napi::Function::New(env, Profile));
  return exports;
}

}  // namespace

NODE_API_MODULE(tdq_native, Init)
