# syntax=docker/dockerfile:1
#
# One image for every kessai service: the entrypoint is the `kessai` binary, the
# command picks the role (`coordinator`, `participant <name>`). The image is built
# without the demo / bench / chaos harness; `--build-arg KESSAI_FEATURES=harness,amqp,sqs`
# puts it back.
# Configuration comes from KESSAI_* environment variables (see service/src/config.rs) or a
# TOML file passed with --config.
#
#   docker build -t kessai .
#   docker run --rm kessai --help

ARG RUST_VERSION=1.95
ARG KESSAI_FEATURES=amqp,sqs

# ---- build ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder
ARG KESSAI_FEATURES
WORKDIR /src
COPY . .
# The cache mounts keep the crates.io downloads and target/ between builds (BuildKit);
# the binary is copied out of the cached target/ so the next stage can see it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kessai --no-default-features --features "${KESSAI_FEATURES}" \
    && install -D -m 0755 target/release/kessai /out/kessai

# ---- run -----------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to real AWS SQS / amqps brokers / managed PostgreSQL.
# curl: the container health check (`curl -fsS http://127.0.0.1:8080/healthz`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 kessai \
    && useradd --system --uid 10001 --gid kessai --home-dir /var/lib/kessai --create-home \
       --shell /usr/sbin/nologin kessai
COPY --from=builder /out/kessai /usr/local/bin/kessai
USER kessai:kessai
WORKDIR /var/lib/kessai
# Inside a container the HTTP endpoint (/healthz, the API) must listen beyond
# loopback; SQLite files, if that store is chosen, go under the user's home.
ENV KESSAI_HTTP__LISTEN=0.0.0.0:8080 \
    KESSAI_STORE__DATA_DIR=/var/lib/kessai/data \
    RUST_LOG=info,sqlx=warn,sea_orm=warn
EXPOSE 8080
# SIGTERM starts a graceful stop (stop consuming, finish in-flight work, flush the
# outbox); give it time with `stop_grace_period` / `--stop-timeout`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["kessai"]
CMD ["--help"]
