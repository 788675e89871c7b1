#pragma once

#include <string>
#include <string_view>
#include <vector>

/// The coordinator's roster: the node identities (certificate CNs) it admits.
namespace chorus::coordinator {

/// An ordered set of admitted node identities.
class Roster {
 public:
  /// Throws `chorus::Error` (INVALID_ARGUMENT) when the list is empty, holds a
  /// duplicate, or holds a name `validate_identity` refuses.
  explicit Roster(std::vector<std::string> identities);

  /// Throws `chorus::Error` (INVALID_ARGUMENT) unless `identity` is 1 to 64
  /// characters of [A-Za-z0-9._-] starting with a letter or digit — a name
  /// that is safe as a certificate CN, a file name and a log value.
  static void validate_identity(std::string_view identity);

  /// Whether `identity` is on the roster.
  bool admits(std::string_view identity) const;

  /// Roster identities not in `present`, in roster order (for quorum
  /// messages that name who is missing).
  std::vector<std::string> missing(
      const std::vector<std::string>& present) const;

  /// All identities, in the order given.
  const std::vector<std::string>& identities() const { return identities_; }

  /// Number of identities.
  std::size_t size() const { return identities_.size(); }

 private:
  std::vector<std::string> identities_;
};

}  // namespace chorus::coordinator
