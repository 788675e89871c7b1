#include "chorus/coordinator/roster.hpp"

#include "chorus/core/error.hpp"
#include "support/doctest.hpp"

using chorus::coordinator::Roster;

TEST_CASE("roster: admits exactly the listed identities") {
  Roster roster({"hospital-a", "lab.b", "c_3"});
  CHECK(roster.size() == 3);
  CHECK(roster.admits("hospital-a"));
  CHECK(roster.admits("lab.b"));
  CHECK_FALSE(roster.admits("hospital"));
  CHECK_FALSE(roster.admits(""));
  CHECK(roster.missing({"lab.b"}) ==
        std::vector<std::string>{"hospital-a", "c_3"});
  CHECK(roster.missing({"c_3", "hospital-a", "lab.b", "stranger"}).empty());
}

TEST_CASE("roster: empty, duplicate and unsafe identities are refused") {
  CHECK_THROWS_AS(Roster({}), chorus::Error);
  try {
    Roster roster({"a", "b", "a"});
    FAIL("no error");
  } catch (const chorus::Error& e) {
    CHECK(e.code() == chorus::Code::kInvalidArgument);
    CHECK(std::string(e.what()) == "node 'a' is on the roster twice");
  }
  for (const char* bad :
       {"", "-lead", ".hidden", "has space", "a/b", "CN=x,O=y", "tab\there"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(Roster::validate_identity(bad), chorus::Error);
  }
  CHECK_THROWS_AS(Roster::validate_identity(std::string(65, 'a')),
                  chorus::Error);
  CHECK_NOTHROW(Roster::validate_identity(std::string(64, 'a')));
}
