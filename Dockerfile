# syntax=docker/dockerfile:1
# The Chorus image: the `chorus` binary on Debian 12, run as a non-root user.
#   docker build -t chorus .        (docker-compose.yml builds it too)
# Stage 1 builds with Debian's packages; stage 2 holds the binary, the
# shared libraries it links and the Fashion-MNIST data set — nothing of the
# build.

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y -q --no-install-recommends \
      g++ cmake ninja-build make pkg-config \
      libtorch-dev libopenblas0-openmp \
      libprotobuf-dev protobuf-compiler \
      libasio-dev libssl-dev libspdlog-dev libfmt-dev zlib1g-dev \
      libtomlplusplus-dev libcli11-dev nlohmann-json3-dev \
      libspng-dev libturbojpeg0-dev libzip-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake cmake
COPY core core
COPY protocol protocol
COPY fusion fusion
COPY node node
COPY coordinator coordinator
COPY simulate simulate
COPY apps apps
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCHORUS_BUILD_TESTS=OFF -DCHORUS_BUILD_BENCH=OFF -DCHORUS_USE_CCACHE=OFF \
 && cmake --build /build --target chorus \
 && strip /build/apps/chorus/chorus

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y -q --no-install-recommends \
      libtorch1.13 libopenblas0-openmp libprotobuf32 libssl3 \
      libspdlog1.10 libfmt9 libtomlplusplus3 libspng0 libturbojpeg0 libzip4 \
      zlib1g dataset-fashion-mnist \
 && rm -rf /var/lib/apt/lists/*
# Every party's files live in /var/lib/chorus (a volume per party), owned
# by the unprivileged user the processes run as.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/chorus chorus \
 && mkdir -p /var/lib/chorus/exchange /etc/chorus \
 && chown -R chorus:chorus /var/lib/chorus
COPY --from=build /build/apps/chorus/chorus /usr/local/bin/chorus
COPY deploy/compose/entrypoint.sh /usr/local/bin/chorus-entrypoint
COPY deploy/compose/coordinator.toml deploy/compose/node.toml /etc/chorus/
USER chorus
WORKDIR /var/lib/chorus
ENTRYPOINT ["chorus-entrypoint"]
CMD ["node", "a"]
