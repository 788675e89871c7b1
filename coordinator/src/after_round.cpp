// The registry of algorithms' round steps.
#include "after_round.hpp"

#include <map>

namespace chorus::coordinator {

std::unique_ptr<AfterRound> make_after_round(const std::string& algorithm,
                                             const RoundContext& context) {
  using Factory = std::unique_ptr<AfterRound> (*)(const RoundContext&);
  static const std::map<std::string, Factory> kRegistered = {
      {"tae", make_tae_round},
  };
  auto it = kRegistered.find(algorithm);
  if (it != kRegistered.end()) return it->second(context);
  return std::make_unique<AfterRound>();
}

}  // namespace chorus::coordinator
