# drover's services in one image (the k8s/ manifests run each binary from it).
#   docker build -t drover:0.1.0 .
# Stage 1 builds every binary of the workspace in release mode with the committed Cargo.lock;
# stage 2 is a slim runtime with the binaries, CA certificates and an unprivileged user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir /out \
 && find target/release -maxdepth 1 -type f -executable -name 'drover*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin drover
COPY --from=build /out/ /usr/local/bin/
USER 10001
# tini reaps the script and plugin processes agents start, and forwards signals.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["drover", "--help"]
