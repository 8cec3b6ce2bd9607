# syntax=docker/dockerfile:1
# Build: docker build -t cas-bridge .
FROM rust:1.85-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys: it needs a C toolchain,
# make and perl (all in the rust image).
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
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/cas-bridge"]
CMD ["run"]
