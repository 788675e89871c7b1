// The g++ 12 coroutine rule, proved on the compiler that builds Chorus.
//
// Observed with g++ 12.2 (-O0 and -O2): a lambda expression that appears in
// a full-expression containing `co_await` — as an argument of the awaited
// call, inside an awaitable operator, or beside a `co_await` in a co_spawn
// call — has its closure destroyed twice (a double free when it captures an
// Envelope). Everything else a coroutine does here is balanced: class
// prvalues passed by value or by reference, named lambdas, lambdas in
// statements without `co_await`.
//
// The rule (README, "Conventions"): in a coroutine, never write a lambda
// expression in a statement that contains `co_await`; name the lambda in a
// statement of its own and pass the named object. Every coroutine in the
// tree follows it; the cases below are the reproducer the rule rests on.
#include <asio/awaitable.hpp>
#include <asio/co_spawn.hpp>
#include <asio/detached.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <functional>

#include "support/doctest.hpp"

namespace {

using asio::awaitable;

// Counts constructions and destructions; holds no resource, so a double
// destruction is observable and harmless.
struct Counted {
  static inline int constructed = 0;
  static inline int destroyed = 0;
  int value = 1;
  Counted() { ++constructed; }
  Counted(const Counted& other) : value(other.value) { ++constructed; }
  Counted(Counted&& other) noexcept : value(other.value) { ++constructed; }
  Counted& operator=(const Counted&) = default;
  ~Counted() { ++destroyed; }
};

struct Balance {
  int constructed = 0;
  int destroyed = 0;
};

// Runs `body` to completion on a fresh io_context and returns the counts.
Balance run(awaitable<void> (*body)()) {
  Counted::constructed = Counted::destroyed = 0;
  asio::io_context io;
  asio::co_spawn(io, body(), asio::detached);
  io.run();
  return {Counted::constructed, Counted::destroyed};
}

awaitable<int> call_function(std::function<int()> f) { co_return f(); }
template <typename F>
awaitable<int> call_template(F f) {
  co_return f();
}
awaitable<int> take_value(Counted c) { co_return c.value; }
awaitable<int> take_ref(const Counted& c) { co_return c.value; }

awaitable<void> short_wait_or(awaitable<int> work) {
  using namespace asio::experimental::awaitable_operators;
  asio::steady_timer timer(co_await asio::this_coro::executor,
                           std::chrono::milliseconds(1));
  auto wait = timer.async_wait(asio::use_awaitable);
  co_await (std::move(work) || std::move(wait));
}

// --- Forbidden: a lambda expression in a statement with co_await. ---

awaitable<void> lambda_into_function_in_co_await() {
  Counted c;
  int r = co_await call_function([c] { return c.value; });
  (void)r;
}
awaitable<void> lambda_into_template_in_co_await() {
  Counted c;
  int r = co_await call_template([c] { return c.value; });
  (void)r;
}
awaitable<void> lambda_beside_co_await_in_co_spawn() {
  Counted c;
  asio::co_spawn(
      co_await asio::this_coro::executor,
      [c]() -> awaitable<void> { co_return; }, asio::detached);
}
awaitable<void> lambda_in_awaitable_operator() {
  using namespace asio::experimental::awaitable_operators;
  Counted c;
  asio::steady_timer timer(co_await asio::this_coro::executor,
                           std::chrono::milliseconds(1));
  co_await (call_template([c] { return c.value; }) ||
            timer.async_wait(asio::use_awaitable));
}

// --- Allowed: what the tree does. ---

awaitable<void> named_lambda_then_await() {
  Counted c;
  std::function<int()> f = [c] { return c.value; };
  auto op = call_function(f);
  int r = co_await std::move(op);
  (void)r;
}
awaitable<void> named_generic_lambda_then_await() {
  Counted c;
  auto f = [c] { return c.value; };
  auto op = call_template(f);
  int r = co_await std::move(op);
  (void)r;
}
awaitable<void> prvalue_by_value_in_co_await() {
  int r = co_await take_value(Counted{});
  (void)r;
}
awaitable<void> prvalue_by_reference_in_co_await() {
  int r = co_await take_ref(Counted{});
  (void)r;
}
awaitable<void> named_lambda_coroutine_with_prvalues() {
  auto add = [](Counted a, const Counted& b) -> awaitable<int> {
    co_return a.value + b.value;
  };
  int r = co_await add(Counted{}, Counted{});
  (void)r;
}
awaitable<void> prvalue_in_awaitable_operator() {
  co_await short_wait_or(take_value(Counted{}));
}
awaitable<void> moved_value_into_spawned_coroutine() {
  Counted c;
  asio::co_spawn(co_await asio::this_coro::executor, take_value(std::move(c)),
                 asio::detached);
}
awaitable<void> lambda_in_co_spawn_without_co_await() {
  Counted c;
  auto executor = co_await asio::this_coro::executor;
  asio::co_spawn(
      executor, [c]() -> awaitable<void> { co_return; }, asio::detached);
}

}  // namespace

TEST_CASE("coroutine rule: what the tree does destroys each object once") {
  struct Case {
    const char* name;
    awaitable<void> (*body)();
  };
  const Case cases[] = {
      {"named lambda, then await", named_lambda_then_await},
      {"named generic lambda, then await", named_generic_lambda_then_await},
      {"class prvalue by value in co_await", prvalue_by_value_in_co_await},
      {"class prvalue by reference in co_await",
       prvalue_by_reference_in_co_await},
      {"named lambda coroutine, prvalue arguments",
       named_lambda_coroutine_with_prvalues},
      {"class prvalue inside an awaitable operator",
       prvalue_in_awaitable_operator},
      {"moved value into a spawned coroutine",
       moved_value_into_spawned_coroutine},
      {"lambda in co_spawn, no co_await in the statement",
       lambda_in_co_spawn_without_co_await},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto b = run(c.body);
    CHECK(b.constructed > 0);
    CHECK(b.destroyed == b.constructed);
  }
}

TEST_CASE(
    "coroutine rule: a lambda in a statement with co_await (reproducer)") {
  struct Case {
    const char* name;
    awaitable<void> (*body)();
  };
  const Case cases[] = {
      {"lambda into std::function in co_await",
       lambda_into_function_in_co_await},
      {"lambda into a template parameter in co_await",
       lambda_into_template_in_co_await},
      {"lambda beside co_await in a co_spawn call",
       lambda_beside_co_await_in_co_spawn},
      {"lambda inside an awaitable operator", lambda_in_awaitable_operator},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto b = run(c.body);
    CHECK(b.constructed > 0);
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ == 12
    // The miscompilation the rule avoids: one destruction too many. Should a
    // g++ 12 update fix it, this fails: revisit the rule then.
    CHECK(b.destroyed == b.constructed + 1);
#else
    // Another compiler: report what it does; the rule stays either way.
    WARN(b.destroyed == b.constructed);
#endif
  }
}
