#pragma once

#include <string_view>

namespace chorus::protocol {

/// Throws `chorus::Error` (INVALID_ARGUMENT) unless `identity` is 1 to 64
/// characters of [A-Za-z0-9._-] starting with a letter or digit: a name that
/// is safe as a certificate CN, a file name and a log value. Node and
/// coordinator names follow this rule.
void validate_identity(std::string_view identity);

}  // namespace chorus::protocol
