# syntax=docker/dockerfile:1
# Build: docker build --build-arg CAS_BRIDGE_COMMIT=$(git rev-parse --short=12 HEAD) -t cas-bridge .
# Without a Docker engine: scripts/image (buildah and podman, nothing pulled)
# builds an image with the same final configuration and runs it.
FROM rust:1.85-bookworm AS build
WORKDIR /src
# librdkafka and zlib are built from source and linked in by rdkafka-sys: it
# needs a C toolchain, make and perl (all in the rust image).
# The commit `--version` and cas_bridge_build_info report (no .git here).
ARG CAS_BRIDGE_COMMIT=unknown
ENV CAS_BRIDGE_COMMIT=${CAS_BRIDGE_COMMIT}
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY schemas ./schemas
COPY benches ./benches
RUN cargo build --release --locked --bin cas-bridge \
 && strip target/release/cas-bridge

# glibc + libgcc + CA certificates, no shell, non-root (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cas-bridge /usr/local/bin/cas-bridge
# The built-in schemas are compiled into the binary; this copy is the
# starting point for an override (schemas.dir).
COPY schemas /usr/share/cas-bridge/schemas
ENV PATH=/usr/local/bin:/usr/bin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /home/nonroot
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cas-bridge"]
CMD ["run"]
