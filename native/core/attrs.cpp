#include "attrs.h"

#include <cmath>

namespace tdq {

namespace {
const AttrValue& need(const Attrs& a, const std::string& k) {
  auto it = a.values.find(k);
  TDQ_CHECK_TYPE(it != a.values.end(), a.op, ": missing attribute '", k, "'");
  return it->second;
}
int64_t to_int(const Attrs& a, const std::string& k, double v) {
  TDQ_CHECK_TYPE(std::isfinite(v) && std::floor(v) == v, a.op, ": attribute '", k,
                 "' must be an integer, got ", v);
  return static_cast<int64_t>(v);
}
}  // namespace

double Attrs::get_float(const std::string& k) const {
  const auto& v = need(*this, k);
  if (auto p = std::get_if<double>(&v)) return *p;
  if (auto b = std::get_if<bool>(&v)) return *b ? 1.0 : 0.0;
  fail(ErrorKind::Type, op, ": attribute '", k, "' must be a number");
}
double Attrs::get_float(const std::string& k, double d) const { return has(k) ? get_float(k) : d; }
int64_t Attrs::get_int(const std::string& k) const { return to_int(*this, k, get_float(k)); }
int64_t Attrs::get_int(const std::string& k, int64_t d) const { return has(k) ? get_int(k) : d; }
bool Attrs::get_bool(const std::string& k, bool d) const {
  if (!has(k)) return d;
  const auto& v = need(*this, k);
  if (auto b = std::get_if<bool>(&v)) return *b;
  if (auto p = std::get_if<double>(&v)) return *p != 0;
  fail(ErrorKind::Type, op, ": attribute '", k, "' must be a boolean");
}
std::string Attrs::get_string(const std::string& k, const std::string& d) const {
  if (!has(k)) return d;
  const auto& v = need(*this, k);
  if (auto s = std::get_if<std::string>(&v)) return *s;
  fail(ErrorKind::Type, op, ": attribute '", k, "' must be a string");
}
std::vector<double> Attrs::get_floats(const std::string& k) const {
  const auto& v = need(*this, k);
  if (auto p = std::get_if<std::vector<double>>(&v)) return *p;
  if (auto p = std::get_if<double>(&v)) return {*p};
  fail(ErrorKind::Type, op, ": attribute '", k, "' must be an array of numbers");
}
std::vector<int64_t> Attrs::get_ints(const std::string& k) const {
  std::vector<int64_t> out;
  for (double v : get_floats(k)) out.push_back(to_int(*this, k, v));
  return out;
}
std::vector<int64_t> Attrs::get_ints(const std::string& k, const std::vector<int64_t>& d) const {
  return has(k) ? get_ints(k) : d;
}

}  // namespace tdq
