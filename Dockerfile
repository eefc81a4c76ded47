# syntax=docker/dockerfile:1
#
# The tower-deepseek gateway (examples/gateway) as a container image. deploy/README.md says how
# to build, run and deploy it:
#
#   docker build -t tower-deepseek-gateway .
#   docker run --rm -p 8080:8080 -e DEEPSEEK_API_KEY tower-deepseek-gateway
#
# Two stages: the builder compiles the example with the project's toolchain; the runtime image
# holds the binary and nothing else of the build. Both are Debian 13 (trixie), so the binary
# links against the same glibc it was built with. For a reproducible build, pin both images by
# digest as well (`FROM rust:1.95.0-slim-trixie@sha256:...`); the tags here pin the Rust release
# and the Debian release.

FROM rust:1.95.0-slim-trixie AS builder
WORKDIR /src

# Only what cargo reads: the manifest names benches and tests, and the crate docs include the
# README, so those come too. The .dockerignore keeps target/, .git and local files out.
COPY Cargo.toml Cargo.lock README.md ./
COPY src ./src
COPY examples ./examples
COPY benches ./benches
COPY tests ./tests

# Dependency caching: the crates.io downloads and the target dir live in BuildKit cache mounts,
# so on the same builder a source change recompiles the crate and the example, not the
# dependencies. A cache mount is not part of the image, so the binary is copied out in the same
# step. `--locked`: exactly the versions in Cargo.lock.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --release --example gateway \
        --features mock,axum,upstream,prometheus,redis,pprof \
    && install -D -m 0755 target/release/examples/gateway /out/gateway

# Runtime: Debian slim rather than distroless, for one reason: the health check below needs a
# shell (bash's /dev/tcp) and there is no curl in either. The binary needs no CA bundle (rustls
# with the webpki roots compiled in) and no other library than glibc.
FROM debian:trixie-slim AS runtime

COPY --from=builder /out/gateway /usr/local/bin/gateway

# No secret is baked in: DEEPSEEK_API_KEY comes from the environment at run time (`docker run
# -e DEEPSEEK_API_KEY`, a Kubernetes Secret). Without it the gateway serves from its embedded
# mock DeepSeek, which is only for trying it out. Listen on every interface: in a container,
# 127.0.0.1 (the gateway's default) is unreachable from outside.
ENV GATEWAY_ADDR=0.0.0.0:8080 \
    RUST_LOG=info

# A numeric non-root user (no passwd entry needed), so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080

# SIGTERM starts the graceful shutdown: the gateway stops accepting connections and lets
# in-flight requests (streams included) finish. Give it time: `docker stop -t 660`.
STOPSIGNAL SIGTERM

# GET /healthz on the port of GATEWAY_ADDR over bash's /dev/tcp; healthy on a 200.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${GATEWAY_ADDR##*:}\" && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r status <&3 && [[ $status == 'HTTP/1.1 200 '* ]]"]

ENTRYPOINT ["/usr/local/bin/gateway"]
