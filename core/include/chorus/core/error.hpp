#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace chorus {

/// Status codes shared by every library and by the wire protocol. The `Code`
/// enum of `protocol/chorus/v1` mirrors these values one to one (a protocol
/// test asserts it). Client faults — the request itself was wrong and retrying
/// it unchanged fails again — are 1000..1999; server faults — the serving side
/// could not do a valid request now — are 2000..2999.
enum class Code : std::int32_t {
  kOk = 0,

  // Client faults.
  kInvalidArgument = 1000,     ///< Malformed input: shape, dtype, value, key.
  kUnauthenticated = 1001,     ///< No or unverifiable credentials.
  kPermissionDenied = 1002,    ///< Authenticated, but not allowed (roster).
  kNotFound = 1003,            ///< A named file, model or peer does not exist.
  kAlreadyExists = 1004,       ///< Creating something that is already there.
  kFailedPrecondition = 1005,  ///< Valid request in the wrong state.
  kResourceExhausted = 1006,   ///< A budget, rate or size limit was reached.
  kOutOfRange = 1007,          ///< A value outside the accepted range.
  kUnsupportedVersion = 1008,  ///< The peer speaks a protocol we do not.

  // Server faults.
  kInternal = 2000,          ///< A bug or broken invariant on the serving side.
  kUnavailable = 2001,       ///< The service or peer cannot be reached now.
  kDeadlineExceeded = 2002,  ///< The answer did not arrive in time.
  kCancelled = 2003,         ///< Abandoned, usually by shutdown.
  kDataLoss = 2004,          ///< Stored or transmitted bytes are corrupt.
  kUnimplemented = 2005,     ///< Not supported by this build or peer.
};

/// The canonical upper-case name of a code, e.g. "INVALID_ARGUMENT".
std::string_view code_name(Code code) noexcept;

/// True for codes in the client-fault range.
constexpr bool is_client_fault(Code code) noexcept {
  auto v = static_cast<std::int32_t>(code);
  return v >= 1000 && v < 2000;
}

/// True for codes in the server-fault range.
constexpr bool is_server_fault(Code code) noexcept {
  auto v = static_cast<std::int32_t>(code);
  return v >= 2000 && v < 3000;
}

/// The one exception type of chorus. It carries a `Code` that the session
/// boundary translates to a wire `Status`; `what()` is the message alone.
class Error : public std::runtime_error {
 public:
  /// An error with `code` and a human-readable `message`.
  Error(Code code, std::string message)
      : std::runtime_error(std::move(message)), code_(code) {}

  /// The status code of this error.
  Code code() const noexcept { return code_; }

 private:
  Code code_;
};

/// "CODE_NAME: message", for logs and command-line output.
std::string describe(const Error& error);

/// `message` as it may leave the process (a wire Status, a refusal): what
/// precedes a library's stack trace ("Exception raised from …", "frame
/// #0: …", as libtorch appends), at most `max_length` characters.
std::string without_backtrace(std::string_view message,
                              std::size_t max_length = 1000);

/// Throws `Error(code, fmt::format(format, args...))`.
template <typename... Args>
[[noreturn]] void fail(Code code, fmt::format_string<Args...> format,
                       Args&&... args) {
  throw Error(code, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace chorus

/// Precondition check: throws `chorus::Error` with `Code::kInvalidArgument`
/// and the formatted message when `cond` is false.
/// `CHORUS_CHECK(n > 0, "batch size must be positive, got {}", n);`
#define CHORUS_CHECK(cond, ...)                                      \
  do {                                                               \
    if (!(cond)) [[unlikely]] {                                      \
      ::chorus::fail(::chorus::Code::kInvalidArgument, __VA_ARGS__); \
    }                                                                \
  } while (false)

/// Like `CHORUS_CHECK` with an explicit code.
#define CHORUS_CHECK_CODE(cond, code, ...) \
  do {                                     \
    if (!(cond)) [[unlikely]] {            \
      ::chorus::fail((code), __VA_ARGS__); \
    }                                      \
  } while (false)
