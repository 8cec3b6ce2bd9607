# syntax=docker/dockerfile:1
# Build: docker build -t cas-bridge .
# Without a Docker engine: scripts/image (buildah and podman, nothing pulled)
# builds an image with the same final configuration and runs it.
FROM rust:1.85-bookworm AS build
WORKDIR /src
# librdkafka and zlib are built from source and linked in by rdkafka-sys: it
# needs a C toolchain, make and perl (all in the rust image).
COPY Cargo.toml Cargo.lock ./
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
