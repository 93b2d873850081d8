// Op attributes (stride, eps, axis...). Converted from JS before an op is
// queued, so kernels never touch V8 values.
#pragma once
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "error.h"

namespace tdq {

using AttrValue = std::variant<double, bool, std::string, std::vector<double>>;

class Attrs {
 public:
  std::map<std::string, AttrValue> values;
  std::string op;  // for error messages

  bool has(const std::string& k) const { return values.count(k) > 0; }
  double get_float(const std::string& k) const;
  double get_float(const std::string& k, double dflt) const;
  int64_t get_int(const std::string& k) const;
  int64_t get_int(const std::string& k, int64_t dflt) const;
  bool get_bool(const std::string& k, bool dflt) const;
  std::string get_string(const std::string& k, const std::string& dflt) const;
  std::vector<double> get_floats(const std::string& k) const;
  std::vector<int64_t> get_ints(const std::string& k) const;
  std::vector<int64_t> get_ints(const std::string& k, const std::vector<int64_t>& dflt) const;
};

}  // namespace tdq
