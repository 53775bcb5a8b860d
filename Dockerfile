# syntax=docker/dockerfile:1.7
# Build: docker build -t selfie-auth --build-arg REVISION=$(git rev-parse HEAD) \
#          --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) .
# The runtime image is distroless (glibc, CA certificates, no shell) and runs as
# a non-root user. Pin both base images by digest in your own registry mirror.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin selfie-auth \
    && install -D -m 0755 target/release/selfie-auth /out/selfie-auth \
    && install -d -m 0750 /out/data

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
COPY --from=build --chown=65532:65532 /out/data /var/lib/selfie-auth
ENV SELFIE_AUTH_DATA_DIR=/var/lib/selfie-auth \
    SELFIE_AUTH_LOG_FORMAT=json
USER 65532:65532
# 50051: gRPC (API, health, reflection); 8080: HTTP (Smile ID callbacks, /healthz, /readyz, /metrics)
EXPOSE 50051 8080
# For engines without Kubernetes probes: the same gRPC health the readiness probe reads.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/selfie-auth", "health", "--addr", "127.0.0.1:50051", "--service", "selfieauth.v1.SelfieAuth"]
ENTRYPOINT ["/usr/local/bin/selfie-auth"]
CMD ["serve"]
