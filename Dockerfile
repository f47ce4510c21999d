# One image with every binary: `gateway`, `discovery` and the sample services
# (`auth`, `users`, `catalog`, `orders`, `echo`, `stack`). The Kubernetes manifests in
# manifests/ pick the binary with `command:`.
#
#   docker build -t api-gateway:0.1.0 .
#   docker run --rm api-gateway:0.1.0 gateway check /etc/gateway/example.yaml
#   docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/gateway/my.yaml:ro" \
#     api-gateway:0.1.0 gateway run --config /etc/gateway/my.yaml
# (config/local.yaml listens on 127.0.0.1, unreachable from outside a container.)

# ---- build ----------------------------------------------------------------------
FROM rust:1-bookworm AS build
# cmake: Pingora's zlib-ng and aws-lc builds. The Rust image already has a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches make rebuilds incremental (BuildKit); the binaries are
# copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p discovery -p example-services \
 && mkdir -p /out \
 && for bin in gateway discovery auth users catalog orders echo stack; do \
      cp "target/release/$bin" /out/; \
    done

# ---- run ------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --no-create-home --shell /usr/sbin/nologin app
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/gateway/
# Numeric, so Kubernetes can verify runAsNonRoot without resolving the name.
USER 10001:10001
EXPOSE 8080 9901 8081
# No default service: the manifests (or `docker run ... BINARY ARGS`) choose one.
CMD ["gateway", "--help"]
