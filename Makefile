# The README's two commands: `make demo` and `make test`. Both install what is
# missing (scripts/install-deps.sh, needs root or sudo), configure and build.
BUILD_DIR  ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS       ?= $(shell nproc)
CHORUS      = $(BUILD_DIR)/apps/chorus/chorus

.PHONY: all deps configure build demo test bench sanitize format format-check clean

all: build

deps:
	@scripts/install-deps.sh

# Configure once; CMake re-runs itself when a CMakeLists.txt changes.
$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=$(BUILD_TYPE)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

demo: build
	$(CHORUS) simulate

test: build
	ctest --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer
# (build-asan/), then the protocol, node and coordinator suites under
# ThreadSanitizer (build-tsan/). Any report fails the run. The suppression
# files in tests/sanitizers/ say what each entry excuses and why. Left out:
# the 30-second libFuzzer test, and the descriptor-exhaustion test, where
# the sanitizer runtimes themselves need descriptors (docs/building.md).
SAN_FLAGS = -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCHORUS_BUILD_BENCH=OFF
SAN_ENV   = ASAN_OPTIONS=halt_on_error=1:detect_leaks=1 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
            LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizers/lsan.supp:print_suppressions=0 \
            TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/tests/sanitizers/tsan.supp
sanitize: deps
	cmake -S . -B build-asan $(SAN_FLAGS) -DCHORUS_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	$(SAN_ENV) ctest --test-dir build-asan --output-on-failure -j $(JOBS) \
	    -E "fuzz: every target|out of descriptors"
	cmake -S . -B build-tsan $(SAN_FLAGS) -DCHORUS_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS) --target chorus_protocol_tests \
	    chorus_node_tests chorus_coordinator_tests
	$(SAN_ENV) ctest --test-dir build-tsan --output-on-failure -j $(JOBS) \
	    -L "^(protocol|node|coordinator)$$"

# Benchmarks print their tables and write JSON to $(BUILD_DIR)/bench-results/.
bench: build
	@mkdir -p $(BUILD_DIR)/bench-results
	$(BUILD_DIR)/bench/bench_data --json $(BUILD_DIR)/bench-results/data.json
	$(BUILD_DIR)/bench/bench_transport --json $(BUILD_DIR)/bench-results/transport.json
	$(BUILD_DIR)/bench/bench_coordinator --json $(BUILD_DIR)/bench-results/coordinator.json
	$(BUILD_DIR)/bench/bench_node --json $(BUILD_DIR)/bench-results/node.json
	$(BUILD_DIR)/bench/bench_p1 --seeds 3 --json $(BUILD_DIR)/bench-results/p1.json \
	    --save-dir $(BUILD_DIR)/bench-results
	$(BUILD_DIR)/bench/bench_p1 --vs-pytorch 3 \
	    --json $(BUILD_DIR)/bench-results/p1_vs_pytorch.json
	$(BUILD_DIR)/bench/bench_p1 --seeds 3 --only bplus,foe,foe-distill \
	    --privacy off,1,3,8 --json $(BUILD_DIR)/bench-results/p1_privacy.json
	$(BUILD_DIR)/bench/bench_p1 --seeds 3 --privacy off,1,3,8 --mechanism gnmax \
	    --teachers 50 --json $(BUILD_DIR)/bench-results/p1_gnmax50.json
	$(BUILD_DIR)/bench/bench_p1 --seeds 3 --privacy off,1,3,8 --mechanism gnmax \
	    --teachers 1 --json $(BUILD_DIR)/bench-results/p1_gnmax1.json
	scripts/fetch-mnist.sh
	$(BUILD_DIR)/bench/bench_p2 --tasks 100 --json $(BUILD_DIR)/bench-results/p2.json
	$(BUILD_DIR)/bench/bench_p3 --json $(BUILD_DIR)/bench-results/p3.json

# The C++ sources follow .clang-format; CI fails on any difference.
FORMATTED = git ls-files -z '*.cpp' '*.hpp' '*.hpp.in'

format:
	$(FORMATTED) | xargs -0 clang-format -i

format-check: deps
	@$(FORMATTED) | xargs -0 clang-format --dry-run -Werror
	@echo "format-check: every C++ file follows .clang-format"

clean:
	rm -rf $(BUILD_DIR)
