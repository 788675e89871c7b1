#include "chorus/protocol/identity.hpp"

#include "chorus/core/error.hpp"

namespace chorus::protocol {
namespace {

bool is_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9');
}

}  // namespace

void validate_identity(std::string_view identity) {
  CHORUS_CHECK(!identity.empty() && identity.size() <= 64,
               "identity '{}' must be 1 to 64 characters long", identity);
  CHORUS_CHECK(is_alnum(identity.front()),
               "identity '{}' must start with a letter or digit", identity);
  for (char c : identity) {
    CHORUS_CHECK(is_alnum(c) || c == '.' || c == '_' || c == '-',
                 "identity '{}' contains '{}'; use letters, digits, '.', '_' "
                 "or '-'",
                 identity, c);
  }
}

}  // namespace chorus::protocol
