#include "chorus/coordinator/roster.hpp"

#include <algorithm>
#include <set>

#include "chorus/core/error.hpp"
#include "chorus/protocol/identity.hpp"

namespace chorus::coordinator {
void Roster::validate_identity(std::string_view identity) {
  protocol::validate_identity(identity);
}

Roster::Roster(std::vector<std::string> identities)
    : identities_(std::move(identities)) {
  CHORUS_CHECK(!identities_.empty(), "the roster names no node");
  std::set<std::string_view> seen;
  for (const auto& id : identities_) {
    validate_identity(id);
    CHORUS_CHECK(seen.insert(id).second, "node '{}' is on the roster twice",
                 id);
  }
}

bool Roster::admits(std::string_view identity) const {
  return std::find(identities_.begin(), identities_.end(), identity) !=
         identities_.end();
}

std::vector<std::string> Roster::missing(
    const std::vector<std::string>& present) const {
  std::vector<std::string> out;
  for (const auto& id : identities_) {
    if (std::find(present.begin(), present.end(), id) == present.end()) {
      out.push_back(id);
    }
  }
  return out;
}

}  // namespace chorus::coordinator
