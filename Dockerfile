# One image with every binary: `gateway`, `discovery` and the sample services
# (`auth`, `users`, `catalog`, `orders`, `notifications`, `authz`, `echo`, `stack`). The
# Helm chart and the manifests in manifests/ pick the binary with `command:`.
#
#   docker build -t api-gateway:0.1.0 .
#   docker run --rm api-gateway:0.1.0 gateway check /etc/gateway/example.yaml
#   docker run --rm -p 8080:8080 -v "$PWD/my.yaml:/etc/gateway/my.yaml:ro" \
#     api-gateway:0.1.0 gateway run --config /etc/gateway/my.yaml
# (config/local.yaml listens on 127.0.0.1, unreachable from outside a container.)
#
# The runtime stage is also Dockerfile.runtime, which takes binaries built elsewhere
# (CI builds it from the host's binaries with buildah: .ci/image, which also checks that
# the two runtime stages stay identical).

# ---- build ----------------------------------------------------------------------
FROM rust:1-bookworm AS build
# cmake: Pingora's zlib-ng and aws-lc builds. The Rust image already has a C compiler.
# Not pinned (DL3008): this stage is thrown away, bookworm's cmake is fixed at 3.25 for
# the release's life, and a pinned Debian revision breaks the build when a point release
# replaces it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches make rebuilds incremental (BuildKit); the binaries are
# copied out of the cached target directory in the same step, and stripped (symbols are
# most of their size; backtraces keep function names from the unwind tables only).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p discovery -p example-services \
 && mkdir -p /out \
 && for bin in gateway discovery auth users catalog orders notifications authz echo stack; do \
      strip -o "/out/$bin" "target/release/$bin"; \
    done

# ---- run ------------------------------------------------------------------------
# Distroless "cc": glibc, libgcc, CA certificates, tzdata, /etc/passwd; no shell, no
# package manager. The binaries need nothing else (rustls with aws-lc, no OpenSSL).
# Keep this stage identical to Dockerfile.runtime (CI checks it).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/gateway/
# Numeric, so Kubernetes can verify runAsNonRoot without resolving the name.
USER 10001:10001
EXPOSE 8080 9901 8081
# No default service: the manifests (or `docker run ... BINARY ARGS`) choose one.
CMD ["gateway", "--help"]
