# syntax=docker/dockerfile:1
#
# rndc-warden container image: a static (musl) binary on distroless/static, non-root, no shell.
#
#   docker build -t ghcr.io/firestoned/rndc-warden:0.1.0 .
#
# tests/image.rs builds the same binary (`cargo build --release --locked --bin rndc-warden`, the
# release profile of Cargo.toml) for the host and checks that it runs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-alpine AS build
# musl-dev: the C runtime that ring's assembly and the static link need.
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
# On Alpine the host target is x86_64/aarch64-unknown-linux-musl, linked statically by default.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rndc-warden \
    && cp target/release/rndc-warden /rndc-warden

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /rndc-warden /rndc-warden
# mimalloc: commit arena memory lazily and return freed pages to the OS at once (an idle thread
# never reaches a purge delay). With 10,000 instances and key Secrets cached: 95.5 -> 56.2 MiB
# RSS, no measurable admission CPU cost (docs/benchmarks.md). The Helm chart sets the same.
ENV MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=0
# distroless "nonroot": uid/gid 65532, matching the chart's podSecurityContext.
USER 65532:65532
# 8443: HTTPS admission webhook; 8080: /healthz, /readyz, /metrics.
EXPOSE 8443 8080
ENTRYPOINT ["/rndc-warden"]
CMD ["serve"]
