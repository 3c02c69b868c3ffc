# mx image: mx-server (ENTRYPOINT) and the mx CLI, on Debian 12.
#   docker build -t mx:0.1.0 .
#   docker run --rm -p 8001:8001 -p 8002:8002 -p 9401:9401 -v mx-cache:/cache/huggingface mx:0.1.0
# Not built in this repository's CI (no container registry is reachable from it); the
# deployment tests check that this build stage runs the Makefile's CMake configure and
# builds its mx and mx-server targets, and that the final stage runs as non-root.
# The build stage also builds the Python package's wheel (python/, over the same build
# tree); the image carries it in /usr/local/share/mx/wheels for worker images to install
# (`COPY --from=mx:0.1.0 /usr/local/share/mx/wheels /tmp/wheels`, then pip install).
# The CUDA tensor destination of `mx stream` needs the CUDA toolkit at build time; this
# image builds without it (`mx --version` says "CUDA no").

# ---- build stage -------------------------------------------------------------------------
FROM debian:bookworm-slim AS build
# The toolchain and library lines of scripts/install-deps.sh (python3: CMake's configure
# looks for the interpreter that runs the integration tests; gtest: the unit tests are
# declared by the same CMake files, though not built here; pybind11, python3-dev,
# setuptools and pip: the wheel).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config ca-certificates python3 \
      python3-pybind11 python3-dev python3-setuptools python3-pip \
      libcurl4-openssl-dev libssl-dev libspdlog-dev libfmt-dev libcli11-dev \
      nlohmann-json3-dev libgtest-dev libgmock-dev \
      libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc \
      libsqlite3-dev libhiredis-dev libyaml-cpp-dev libucx-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Same configure as `make configure` (BUILD_DIR=build, CMAKE_FLAGS default), then the two
# shipped targets of `make build`.
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build build -j "$(nproc)" --target mx mx-server \
 && strip --strip-debug build/src/cli/mx build/src/server/mx-server
# The wheel: setup.py builds the extension's target in the same build tree.
RUN MX_BUILD_DIR=/src/build python3 -m pip wheel --no-build-isolation --no-deps --no-index \
      -w /src/dist ./python

# ---- runtime stage -----------------------------------------------------------------------
FROM debian:bookworm-slim
# Only the shared libraries the binaries link (ldd), plus CA certificates for the hub.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libcurl4 libssl3 libgrpc++1.51 libgrpc29 libabsl20220623 \
      libprotobuf32 libspdlog1.10 libfmt9 libyaml-cpp0.7 libhiredis0.14 libsqlite3-0 \
      libucx0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mx \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/mx --create-home \
      --shell /usr/sbin/nologin mx \
 && mkdir -p /cache/huggingface/hub \
 && chown -R 10001:10001 /cache
COPY --from=build /src/build/src/server/mx-server /usr/local/bin/mx-server
COPY --from=build /src/build/src/cli/mx /usr/local/bin/mx
COPY --from=build /src/dist/ /usr/local/share/mx/wheels/
ENV HF_HOME=/cache/huggingface \
    MODEL_EXPRESS_CACHE_DIRECTORY=/cache/huggingface/hub
VOLUME ["/cache/huggingface"]
# gRPC (ModelExpress API + grpc.health.v1), HF mirror, Prometheus /metrics
EXPOSE 8001 8002 9401
USER 10001:10001
WORKDIR /home/mx
ENTRYPOINT ["mx-server"]
