# Entry points. `make test` is what CI runs; everything installs its own dependencies.
BUILD_DIR ?= build
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo

.PHONY: deps configure build test run bench fuzz clean format

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
	bash bench/stream.sh

# Fuzzers need clang; they get their own build dir so the main build stays gcc.
FUZZ_SECONDS ?= 60
fuzz: deps
	CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DMX_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBUILD_TESTING=OFF
	cmake --build build-fuzz -j $(JOBS) --target hub_tree_fuzzer safetensors_fuzzer
	for f in safetensors hub_tree; do \
	  mkdir -p build-fuzz/corpus/$$f && cp -n fuzz/corpus/$$f/* build-fuzz/corpus/$$f/ ; \
	  build-fuzz/fuzz/$${f}_fuzzer -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=1 build-fuzz/corpus/$$f || exit 1; \
	done

clean:
	rm -rf $(BUILD_DIR)

format:
	clang-format -i --style=file $$(git ls-files '*.cc' '*.h')
