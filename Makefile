# Entry points. `make test` is what CI runs; everything installs its own dependencies.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: deps configure build test run bench fuzz sanitize clean format

deps:
	@bash scripts/install-deps.sh

$(BUILD_DIR)/build.ninja:
	cmake -S . -B $(BUILD_DIR) -G Ninja $(CMAKE_FLAGS)

configure: deps $(BUILD_DIR)/build.ninja

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 900 -j 2

# The main job: mx-server on its embedded defaults (SQLite registry, gRPC :8001,
# HF mirror :8002, metrics :9401), cache in ./.mx-cache unless HF_HUB_CACHE is set.
MX_CACHE ?= $(if $(HF_HUB_CACHE),$(HF_HUB_CACHE),$(CURDIR)/.mx-cache)
run: build
	MODEL_EXPRESS_CACHE_DIRECTORY="$${MODEL_EXPRESS_CACHE_DIRECTORY:-$(MX_CACHE)}" $(BUILD_DIR)/src/server/mx-server

bench: build
	bash bench/download.sh
	bash bench/serve.sh
	bash bench/mirror.sh
	bash bench/stream.sh

# Fuzzers need clang; they get their own build dir so the main build stays gcc.
FUZZ_SECONDS ?= 60
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DMX_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF
	cmake --build build-fuzz -j $(JOBS) --target hub_tree_fuzzer safetensors_fuzzer http_edge_fuzzer listing_fuzzer \
	  credentials_fuzzer
	for f in safetensors hub_tree http_edge listing credentials; do \
	  mkdir -p build-fuzz/corpus/$$f && cp -n fuzz/corpus/$$f/* build-fuzz/corpus/$$f/ ; \
	  build-fuzz/fuzz/$${f}_fuzzer -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 build-fuzz/corpus/$$f || exit 1; \
	done

# ASan+UBSan over every unit and integration test, then TSan over the unit tests. Each has
# its own build dir (and shares ccache with the main build).
SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=0 \
          UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
          LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/lsan.supp \
          TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:suppressions=$(CURDIR)/scripts/tsan.supp
sanitize: deps
	cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMX_SANITIZE=address,undefined
	cmake --build build-asan -j $(JOBS)
	cd build-asan && $(SAN_ENV) ctest --output-on-failure --timeout 900 -j 2
	cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMX_SANITIZE=thread
	cmake --build build-tsan -j $(JOBS) --target $(UNIT_TESTS)
	cd build-tsan && $(SAN_ENV) ctest --output-on-failure --timeout 900 -j 2 -L unit

UNIT_TESTS = common_test http_test hub_test safetensors_test storage_test streamer_test \
             registry_test server_test http_server_test cloud_test client_test \
             transfer_test

clean:
	rm -rf $(BUILD_DIR) build-asan build-tsan build-fuzz

format:
	clang-format -i --style=file $$(git ls-files '*.cc' '*.h')
