// Calling any ATen operator by its schema name with boxed arguments.
//
// The dispatcher (c10::Dispatcher) knows every operator, its schema and its
// kernels, autograd and autocast included. JS resolves an operator once
// (`opFind("aten::conv2d", "")` -> id), and each `call(id, ...args)` converts
// the JS arguments according to the schema's argument types, fills omitted
// ones with the schema's defaults, and runs `callBoxed`. This keeps the C++
// side to one generic path instead of one hand-written function per op.
#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/function_schema.h>

#include <sstream>

namespace atelier {
namespace {

enum class Kind : uint8_t {
  Tensor,
  TensorList,
  OptTensorList,
  Int,
  Float,
  Bool,
  Scalar,
  IntList,
  FloatList,
  BoolList,
  Str,
  Device,
  Generator,
  Unsupported,
};

struct ArgSpec {
  std::string name;
  Kind kind;
  bool optional;
  bool hasDefault;
  c10::IValue defaultValue;
  int64_t fixedLength;  // int[2] accepts a single int, repeated
};

struct OpEntry {
  c10::OperatorHandle handle;
  std::string name;
  std::vector<ArgSpec> args;
  size_t returns;
};

std::vector<OpEntry>& table() {
  static std::vector<OpEntry> t;
  return t;
}

bool isIntLike(c10::TypeKind k) { return k == c10::TypeKind::IntType || k == c10::TypeKind::SymIntType; }

Kind classifyElement(const c10::TypePtr& t) {
  switch (t->kind()) {
    case c10::TypeKind::TensorType: return Kind::Tensor;
    case c10::TypeKind::IntType:
    case c10::TypeKind::SymIntType: return Kind::Int;
    case c10::TypeKind::FloatType: return Kind::Float;
    case c10::TypeKind::BoolType: return Kind::Bool;
    case c10::TypeKind::NumberType: return Kind::Scalar;
    case c10::TypeKind::StringType: return Kind::Str;
    case c10::TypeKind::DeviceObjType: return Kind::Device;
    case c10::TypeKind::GeneratorType: return Kind::Generator;
    case c10::TypeKind::ListType: {
      auto elem = t->castRaw<c10::ListType>()->getElementType();
      if (elem->kind() == c10::TypeKind::TensorType) return Kind::TensorList;
      if (elem->kind() == c10::TypeKind::OptionalType &&
          elem->castRaw<c10::OptionalType>()->getElementType()->kind() == c10::TypeKind::TensorType) {
        return Kind::OptTensorList;
      }
      if (isIntLike(elem->kind())) return Kind::IntList;
      if (elem->kind() == c10::TypeKind::FloatType) return Kind::FloatList;
      if (elem->kind() == c10::TypeKind::BoolType) return Kind::BoolList;
      return Kind::Unsupported;
    }
    default:
      // ScalarType, Layout and MemoryFormat travel as ints (libtorch 2.x gives
      // them their own type kinds; 1.13 spells them `int`).
      std::string s = t->str();
      if (s == "ScalarType" || s == "Layout" || s == "MemoryFormat") return Kind::Int;
      return Kind::Unsupported;
  }
}

ArgSpec classify(const c10::Argument& a) {
  ArgSpec spec;
  spec.name = a.name();
  c10::TypePtr t = a.type();
  spec.optional = t->kind() == c10::TypeKind::OptionalType;
  if (spec.optional) t = t->castRaw<c10::OptionalType>()->getElementType();
  spec.kind = classifyElement(t);
  spec.hasDefault = a.default_value().has_value();
  if (spec.hasDefault) spec.defaultValue = *a.default_value();
  spec.fixedLength = a.N() ? static_cast<int64_t>(*a.N()) : -1;
  return spec;
}

[[noreturn]] void badArg(const OpEntry& op, const ArgSpec& a, const std::string& why) {
  throw std::runtime_error(op.name + ": argument '" + a.name + "' " + why);
}

int64_t toInt(const OpEntry& op, const ArgSpec& a, const Napi::Value& v) {
  if (!v.IsNumber()) badArg(op, a, "expects an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  auto i = static_cast<int64_t>(d);
  if (static_cast<double>(i) != d) badArg(op, a, "expects an integer, got " + std::to_string(d));
  return i;
}

template <typename T, typename F>
std::vector<T> listOf(const OpEntry& op, const ArgSpec& a, const Napi::Value& v, F&& each) {
  if (!v.IsArray()) badArg(op, a, "expects an array");
  auto arr = v.As<Napi::Array>();
  std::vector<T> out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); ++i) out.push_back(each(arr.Get(i)));
  return out;
}

// One napi_typeof per argument and one read of a number: this conversion is
// most of the cost of a tiny op (bench/engine: 0.96 -> 0.88 us a call).
double numberOf(const Napi::Value& v) {
  double d = 0;
  napi_get_value_double(v.Env(), v, &d);
  return d;
}

at::Tensor tensorFromNumber(const OpEntry& op, const ArgSpec& a, const Napi::Value& v, napi_valuetype t) {
  if (t != napi_number) badArg(op, a, "expects a tensor");
  double d = numberOf(v);
  if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d))) badArg(op, a, "expects a tensor");
  return store().get(static_cast<uint32_t>(d));
}

c10::IValue toIValue(const OpEntry& op, const ArgSpec& a, const Napi::Value& v) {
  napi_valuetype t = v.Type();
  if (t == napi_undefined) {
    if (a.hasDefault) return a.defaultValue;
    if (a.optional) return c10::IValue();
    badArg(op, a, "is required");
  }
  if (t == napi_null) {
    if (a.optional) return c10::IValue();
    badArg(op, a, "may not be null");
  }
  switch (a.kind) {
    case Kind::Tensor: return tensorFromNumber(op, a, v, t);
    case Kind::TensorList:
      return listOf<at::Tensor>(op, a, v, [&](const Napi::Value& e) { return tensorArg(e, a.name.c_str()); });
    case Kind::OptTensorList: {
      c10::List<c10::optional<at::Tensor>> list;
      auto items = listOf<c10::optional<at::Tensor>>(op, a, v, [&](const Napi::Value& e) {
        return e.IsNull() || e.IsUndefined() ? c10::optional<at::Tensor>() : c10::optional<at::Tensor>(tensorArg(e, a.name.c_str()));
      });
      for (auto& t : items) list.push_back(t);
      return list;
    }
    case Kind::Int:
      if (t == napi_boolean) return static_cast<int64_t>(v.As<Napi::Boolean>().Value());
      return toInt(op, a, v);
    case Kind::Float:
      if (t != napi_number) badArg(op, a, "expects a number");
      return numberOf(v);
    case Kind::Bool:
      if (t != napi_boolean) badArg(op, a, "expects a boolean");
      return v.As<Napi::Boolean>().Value();
    case Kind::Scalar: {
      // An integral JS number is an integer Scalar (so int tensors stay int);
      // any other number is a double. Booleans are bool Scalars.
      if (t == napi_boolean) return at::Scalar(v.As<Napi::Boolean>().Value());
      if (t != napi_number) badArg(op, a, "expects a number");
      double d = numberOf(v);
      if (std::isfinite(d) && d == static_cast<double>(static_cast<int64_t>(d)) && std::abs(d) < 9.0e15) {
        return at::Scalar(static_cast<int64_t>(d));
      }
      return at::Scalar(d);
    }
    case Kind::IntList: {
      if (v.IsNumber() && a.fixedLength > 0) return std::vector<int64_t>(a.fixedLength, toInt(op, a, v));
      return listOf<int64_t>(op, a, v, [&](const Napi::Value& e) { return toInt(op, a, e); });
    }
    case Kind::FloatList:
      return listOf<double>(op, a, v, [&](const Napi::Value& e) {
        if (!e.IsNumber()) badArg(op, a, "expects numbers");
        return e.As<Napi::Number>().DoubleValue();
      });
    case Kind::BoolList: {
      auto items = listOf<bool>(op, a, v, [&](const Napi::Value& e) {
        if (!e.IsBoolean()) badArg(op, a, "expects booleans");
        return e.As<Napi::Boolean>().Value();
      });
      c10::List<bool> list;
      for (bool b : items) list.push_back(b);
      return list;
    }
    case Kind::Str:
      if (!v.IsString()) badArg(op, a, "expects a string");
      return v.As<Napi::String>().Utf8Value();
    case Kind::Device:
      if (!v.IsString()) badArg(op, a, "expects a device string such as 'cpu' or 'cuda:0'");
      return parseDevice(v.As<Napi::String>().Utf8Value());
    case Kind::Generator: return generatorArg(v);
    case Kind::Unsupported: break;
  }
  badArg(op, a, "has a type the binding does not convert");
}

Napi::Value toJs(Napi::Env env, const c10::IValue& v) {
  if (v.isTensor()) return tensorValue(env, v.toTensor());
  if (v.isNone()) return env.Null();
  if (v.isInt()) return Napi::Number::New(env, static_cast<double>(v.toInt()));
  if (v.isDouble()) return Napi::Number::New(env, v.toDouble());
  if (v.isBool()) return Napi::Boolean::New(env, v.toBool());
  if (v.isString()) return Napi::String::New(env, v.toStringRef());
  if (v.isScalar()) return Napi::Number::New(env, v.toScalar().toDouble());
  if (v.isTensorList()) {
    auto list = v.toTensorList();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); ++i) arr.Set(i, tensorValue(env, list.get(i)));
    return arr;
  }
  if (v.isTuple()) {
    const auto& elems = v.toTupleRef().elements();
    auto arr = Napi::Array::New(env, elems.size());
    for (size_t i = 0; i < elems.size(); ++i) arr.Set(i, toJs(env, elems[i]));
    return arr;
  }
  if (v.isList()) {
    auto list = v.toListRef();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); ++i) arr.Set(i, toJs(env, list[i]));
    return arr;
  }
  throw std::runtime_error("cannot return a value of type " + v.tagKind() + " to JavaScript");
}

// opFind(name, overload) -> id, or -1 where this libtorch has no such operator
// (e.g. scaled_dot_product_attention before 2.0): callers choose a fallback.
ATELIER_ENTRY(OpFind) {
  return guarded(info, [&] {
    std::string name = info[0].As<Napi::String>().Utf8Value();
    std::string overload = info[1].As<Napi::String>().Utf8Value();
    auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!handle) return Napi::Number::New(info.Env(), -1).As<Napi::Value>();
    OpEntry entry{*handle, overload.empty() ? name : name + "." + overload, {}, handle->schema().returns().size()};
    for (const auto& a : handle->schema().arguments()) entry.args.push_back(classify(a));
    table().push_back(std::move(entry));
    return Napi::Number::New(info.Env(), static_cast<double>(table().size() - 1)).As<Napi::Value>();
  });
}

ATELIER_ENTRY(OpSchema) {
  return guarded(info, [&] {
    const auto& op = table().at(info[0].As<Napi::Number>().Uint32Value());
    std::ostringstream s;
    s << op.handle.schema();
    return Napi::String::New(info.Env(), s.str()).As<Napi::Value>();
  });
}

void runBoxed(const Napi::CallbackInfo& info, const OpEntry& op, torch::jit::Stack& stack) {
  size_t given = info.Length() - 1;
  if (given > op.args.size()) {
    throw std::runtime_error(op.name + ": " + std::to_string(given) + " arguments given, the schema takes " +
                             std::to_string(op.args.size()));
  }
  stack.reserve(std::max(op.args.size(), op.returns));
  Napi::Value undef = info.Env().Undefined();
  for (size_t i = 0; i < op.args.size(); ++i) {
    stack.push_back(toIValue(op, op.args[i], i < given ? info[i + 1] : undef));
  }
  op.handle.callBoxed(&stack);
}

// call(id, ...args): positional arguments in schema order; omitted trailing
// arguments take the schema's defaults. One return value comes back as it is,
// several as an array.
// One stack for every call (JS is single-threaded here), cleared before and
// after, so no allocation per call and no tensor kept alive by it.
torch::jit::Stack& callStack() {
  thread_local torch::jit::Stack stack;
  stack.clear();
  return stack;
}

ATELIER_ENTRY(Call) {
  return guarded(info, [&] {
    const OpEntry& op = table()[info[0].As<Napi::Number>().Uint32Value()];
    torch::jit::Stack& stack = callStack();
    runBoxed(info, op, stack);
    Napi::Env env = info.Env();
    Napi::Value out;
    if (stack.size() == 1) {
      out = toJs(env, stack[0]);
    } else if (stack.empty()) {
      out = env.Undefined();
    } else {
      auto arr = Napi::Array::New(env, stack.size());
      for (size_t i = 0; i < stack.size(); ++i) arr.Set(i, toJs(env, stack[i]));
      out = arr;
    }
    stack.clear();
    return out;
  });
}

// callVoid(id, ...args): for in-place ops, whose result is `self` again.
ATELIER_ENTRY(CallVoid) {
  return guarded(info, [&] {
    const OpEntry& op = table()[info[0].As<Napi::Number>().Uint32Value()];
    torch::jit::Stack& stack = callStack();
    runBoxed(info, op, stack);
    stack.clear();
    return info.Env().Undefined();
  });
}

}  // namespace

void registerOps(Napi::Env env, Napi::Object exports) {
  exports.Set("opFind", Napi::Function::New(env, OpFind, "opFind"));
  exports.Set("opSchema", Napi::Function::New(env, OpSchema, "opSchema"));
  exports.Set("call", Napi::Function::New(env, Call, "call"));
  exports.Set("callVoid", Napi::Function::New(env, CallVoid, "callVoid"));
}

}  // namespace atelier
