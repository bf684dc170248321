# syntax=docker/dockerfile:1
#
# One small image with the three binaries of Background Agent:
#   bgagent-api     the HTTP API            (default command, port 8080)
#   bgagent-worker  the task consumer       (metrics, /health and /ready on port 9091)
#   bgagent         the CLI                 (migrate, health, client commands)
#
#   docker build -t bgagent:local .
#   docker run --rm bgagent:local bgagent --help
#
# The builder is Debian bookworm like the runtime, so the binaries link against the same glibc.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------------------------
# Build stage
# ---------------------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /build
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo

# 1. Dependency layer: the manifests, the lock file and stub sources. This layer (and the
#    compiled dependencies) is reused until a Cargo.toml or Cargo.lock changes.
#    When a workspace member is added, add its Cargo.toml here and its src/ below.
#    Targets declared with an explicit path (e.g. [[test]] path = "tests/integration/main.rs")
#    must exist for Cargo to load a manifest: each one gets a stub too.
COPY Cargo.toml Cargo.lock ./
COPY types/Cargo.toml types/Cargo.toml
COPY shared/Cargo.toml shared/Cargo.toml
COPY api/Cargo.toml api/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
COPY client/Cargo.toml client/Cargo.toml
RUN set -eu; \
    for crate in . types shared api worker client; do \
        mkdir -p "$crate/src"; \
        : > "$crate/src/lib.rs"; \
    done; \
    for crate in . api worker; do \
        echo 'fn main() {}' > "$crate/src/main.rs"; \
    done; \
    for manifest in Cargo.toml types/Cargo.toml shared/Cargo.toml api/Cargo.toml worker/Cargo.toml client/Cargo.toml; do \
        dir="$(dirname "$manifest")"; \
        sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest" | \
        while read -r target; do \
            mkdir -p "$(dirname "$dir/$target")"; \
            [ -e "$dir/$target" ] || echo 'fn main() {}' > "$dir/$target"; \
        done; \
    done; \
    cargo build --release --locked --bins

# 2. The real sources. `touch` makes them newer than the stub build, so Cargo rebuilds the
#    workspace crates (and only them).
COPY migrations migrations
COPY types/src types/src
COPY shared/src shared/src
COPY api/src api/src
COPY worker/src worker/src
COPY client/src client/src
COPY src src
RUN set -eu; \
    find src types/src shared/src api/src worker/src client/src -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --bins; \
    mkdir -p /out; \
    cp target/release/bgagent target/release/bgagent-api target/release/bgagent-worker /out/

# ---------------------------------------------------------------------------------------------
# Runtime stage
# ---------------------------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

ARG VERSION=dev
LABEL org.opencontainers.image.title="bgagent" \
      org.opencontainers.image.description="Background Agent: durable task queue for AI agents (API, worker, CLI)" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"

# ca-certificates: TLS to agent endpoints and the Omni gateway. Nothing else is installed:
# the health check uses the CLI itself, not curl.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bgagent \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin bgagent

COPY --from=builder /out/bgagent /out/bgagent-api /out/bgagent-worker /usr/local/bin/

ENV BGAGENT_BIND=0.0.0.0:8080 \
    BGAGENT_METRICS_BIND=0.0.0.0:9091 \
    BGAGENT_LOG_FORMAT=json \
    RUST_LOG=info

# Numeric user, so Kubernetes can verify runAsNonRoot.
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080 9091
STOPSIGNAL SIGTERM

# `bgagent health` asks BGAGENT_URL (default http://127.0.0.1:8080) for /health and exits 0 on a
# 200. For a worker container point it at the metrics port:
#   BGAGENT_URL=http://127.0.0.1:9091 bgagent health --quiet   (docker-compose.yml does this)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/bgagent", "health", "--quiet"]

CMD ["bgagent-api"]
