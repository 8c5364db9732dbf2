# syntax=docker/dockerfile:1
# clusterdns container image: the release binary on distroless, run as a non-root user.
#
#   docker build -t clusterdns:0.1.0 .
#
# The build command is the one .ci/run runs on every CI run (tests/chart.rs checks they are the
# same), with --locked so the image is built from exactly the dependencies in Cargo.lock.

# Pinned toolchain: the Rust release the project is developed and tested with (>= the
# rust-version in Cargo.toml; edition 2024). Debian 12 (bookworm), as the runtime image, so the
# binary's glibc matches.
ARG RUST_VERSION=1.95.0

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked \
    && install -D -m 0755 target/release/clusterdns /out/clusterdns

# Runtime: glibc and libgcc only (what a Rust binary links), no shell, no package manager;
# the `nonroot` variant runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/clusterdns /clusterdns
USER 65532:65532
# DNS, metrics (/metrics), liveness (/health), readiness (/ready).
EXPOSE 53/udp 53/tcp 9153/tcp 8080/tcp 8181/tcp
ENTRYPOINT ["/clusterdns"]
CMD ["serve", "--config", "/etc/clusterdns/clusterdns.toml"]
