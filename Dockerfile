# syntax=docker/dockerfile:1
#
# One image for every slackline binary (edge, normalizer, consumers, ops CLI).
# Each deployment picks its binary with `command:`; the default is the edge.
#
#   docker build -t slackline:local .
#   docker run --rm slackline:local slackline --help

############################ builder ############################
FROM rust:1.95-bookworm AS builder

# rdkafka builds librdkafka from source: it needs a C toolchain, make and
# python3 (librdkafka's configure script), and the OpenSSL/zlib headers.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential make pkg-config python3 libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# Cache mounts keep the registry and target/ between builds (BuildKit), so a
# code change does not rebuild librdkafka and every dependency. Because
# target/ is a cache mount (not part of the layer), the binaries are copied
# out to /out in the same step. Every workspace binary is named slackline*,
# so new services land in the image without touching this file; the loop
# only fails the build if one that a manifest runs is missing (the
# `slackline` CLI is also the migrate and topics Jobs' command).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -executable -name 'slackline*' \
      -exec cp {} /out/ \; \
 && ls -l /out \
 && for bin in slackline slackline-edge slackline-normalizer \
      slackline-thread-state slackline-timeline-writer slackline-notifier \
      slackline-slack-sender; do \
      test -x "/out/$bin" || { echo "missing binary $bin" >&2; exit 1; }; \
    done

############################ runtime ############################
FROM debian:bookworm-slim AS runtime

# Dynamic libraries of librdkafka (libssl3, zlib1g) and CA roots for TLS to
# Kafka and S3. Nothing else: no shell tools beyond what bookworm-slim has.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/*

# Fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 slackline \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin slackline

COPY --from=builder /out/ /usr/local/bin/

USER 10001:10001
ENV RUST_LOG=info \
    LOG_FORMAT=json
# 3000: Slack-facing HTTP (edge), 9000: admin (/metrics, /healthz, /readyz).
EXPOSE 3000 9000
# No HEALTHCHECK here: the image runs several binaries with different probes;
# docker-compose.yml and the Kubernetes manifests define them per service.
CMD ["slackline-edge"]
