# syntax=docker/dockerfile:1.7
# Build: docker build -t selfie-auth --build-arg REVISION=$(git rev-parse HEAD) \
#          --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
#    or: podman build --format docker -t selfie-auth .   (buildah bud --format docker alike:
#        the OCI format has no HEALTHCHECK, so without it the health check is dropped)
# The runtime image is distroless (glibc, CA certificates, no shell) and runs as
# a non-root user. Pin both base images by digest in your own registry mirror.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Optional build secrets: `cargo-config` (a Cargo config.toml naming a crate mirror) and
# `build-ca` (a PEM CA for a TLS-inspecting proxy or a private mirror).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    --mount=type=secret,id=cargo-config,target=/usr/local/cargo/config.toml,required=false \
    --mount=type=secret,id=build-ca,required=false \
    if [ -s /run/secrets/build-ca ]; then export CARGO_HTTP_CAINFO=/run/secrets/build-ca; fi \
    && cargo build --release --locked --no-default-features --bin selfie-auth \
    && install -D -m 0755 target/release/selfie-auth /out/selfie-auth \
    && install -d -m 0750 /out/var/lib/selfie-auth

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="selfie-auth" \
      org.opencontainers.image.description="Smile ID SmartSelfie Authentication behind one gRPC contract" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/selfie-auth/selfie-auth"
COPY --from=build /out/selfie-auth /usr/local/bin/selfie-auth
# Copying the parent keeps the data folder's own mode (0750); copying the folder
# would copy only its contents into a new 0755 one.
COPY --from=build --chown=65532:65532 /out/var/lib/ /var/lib/
# MIMALLOC_PURGE_DELAY=0: the allocator returns freed pages to the system at once.
# Delayed purges only run on later allocations, so an idle replica kept what a
# burst of submissions had used (3x its idle memory after 60 s; 1.6x with this).
ENV SELFIE_AUTH_DATA_DIR=/var/lib/selfie-auth \
    SELFIE_AUTH_LOG_FORMAT=json \
    MIMALLOC_PURGE_DELAY=0
USER 65532:65532
# 50051: gRPC (API, health, reflection); 8080: HTTP (Smile ID callbacks, /healthz, /readyz, /metrics)
EXPOSE 50051 8080
# For engines without Kubernetes probes: the same gRPC health the readiness probe reads, at
# the port SELFIE_AUTH_GRPC_ADDR gives the server (SELFIE_AUTH_HEALTH_ADDR overrides it).
# Docker keeps HEALTHCHECK; buildah and podman keep it only with --format docker.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/selfie-auth", "health", "--service", "selfieauth.v1.SelfieAuth"]
ENTRYPOINT ["/usr/local/bin/selfie-auth"]
CMD ["serve"]
