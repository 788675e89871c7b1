#include "chorus/core/error.hpp"

#include <algorithm>

namespace chorus {

std::string_view code_name(Code code) noexcept {
  switch (code) {
    case Code::kOk:
      return "OK";
    case Code::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case Code::kUnauthenticated:
      return "UNAUTHENTICATED";
    case Code::kPermissionDenied:
      return "PERMISSION_DENIED";
    case Code::kNotFound:
      return "NOT_FOUND";
    case Code::kAlreadyExists:
      return "ALREADY_EXISTS";
    case Code::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case Code::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case Code::kOutOfRange:
      return "OUT_OF_RANGE";
    case Code::kUnsupportedVersion:
      return "UNSUPPORTED_VERSION";
    case Code::kInternal:
      return "INTERNAL";
    case Code::kUnavailable:
      return "UNAVAILABLE";
    case Code::kDeadlineExceeded:
      return "DEADLINE_EXCEEDED";
    case Code::kCancelled:
      return "CANCELLED";
    case Code::kDataLoss:
      return "DATA_LOSS";
    case Code::kUnimplemented:
      return "UNIMPLEMENTED";
  }
  return "UNKNOWN";
}

std::string describe(const Error& error) {
  return fmt::format("{}: {}", code_name(error.code()), error.what());
}

std::string without_backtrace(std::string_view message,
                              std::size_t max_length) {
  std::size_t end = message.size();
  for (std::string_view marker :
       {std::string_view("\nException raised from "),
        std::string_view("Exception raised from "),
        std::string_view("\nframe #"), std::string_view("\nTraceback ")}) {
    end = std::min(end, message.find(marker));
  }
  std::string out(message.substr(0, end));
  while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
    out.pop_back();
  if (out.size() > max_length) {
    out.resize(max_length);
    out += " [...]";
  }
  return out;
}

}  // namespace chorus
