# syntax=docker/dockerfile:1
#
# blindrelay container image.
#
#   docker build -t blindrelay:0.1.0 .
#   docker run --rm -p 8080:8080 \
#     -e JOIN_TOKEN_SECRET="$(openssl rand -base64 48)" blindrelay:0.1.0
#
# The image runs in production mode (APP_ENV=production): JOIN_TOKEN_SECRET
# is required and an empty CORS_ALLOWED_ORIGINS allows no browser origin. For
# a local try-out pass `-e APP_ENV=development`. Every setting is an
# environment variable: docs/configuration.md. The whole stack (two relays,
# Redis, a load balancer, Prometheus, Grafana): docker-compose.yml and
# docs/DEPLOYMENT.md.

# The toolchain the image is built with. Cargo.toml asks for at least 1.88;
# pin the tag (or better, its digest) so that rebuilds are reproducible.
ARG RUST_VERSION=1.95.0

# ---------------------------------------------------------------------------
# Builder: compiles the release binary.
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS builder

WORKDIR /build

# The release profile keeps line tables (debug = 1) for profiling. They make
# up four fifths of the binary (55 MB against 10 MB) and a backtrace needs
# only the symbols, so the image strips them; `--build-arg STRIP=none` keeps
# them.
ARG STRIP=debuginfo
ENV CARGO_PROFILE_RELEASE_STRIP=${STRIP} \
    CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never

# Dependencies in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source change. The crate is a library plus
# a thin binary, so both get a placeholder. There is no [workspace]: bench/
# and fuzz/ are separate crates (each declares its own workspace) and are not
# part of this build, and neither are tests/ (a dev-dependency of the crate
# on itself is resolved from the lockfile but not built by `cargo build`).
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources, and the reference web client that src/http/client.rs
# compiles into the binary (include_str!). COPY keeps the files' modification
# times, which can be older than the placeholder build's: touching the crate
# roots makes cargo rebuild the crate itself (the dependencies stay cached).
COPY src ./src
COPY web ./web
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/blindrelay /blindrelay

# ---------------------------------------------------------------------------
# Runtime.
#
# distroless/cc rather than debian:bookworm-slim: the binary needs only glibc
# and libgcc_s (no OpenSSL: tokens are checked with pure-Rust crypto and Redis
# is plain TCP), and distroless has exactly those plus CA certificates and
# tzdata, with no shell, no package manager and no setuid binaries, so there
# is nothing in the image for an intruder to use. Both are Debian 12, so the
# glibc the builder linked against is the one at run time. The `nonroot` tag
# runs as UID/GID 65532. To debug a running container, attach a debug
# container (`docker debug`, `kubectl debug --target`), since there is no shell.
# ---------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="blindrelay" \
      org.opencontainers.image.description="A blind WebSocket relay for end-to-end-encrypted, ephemeral chat" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /blindrelay /usr/local/bin/blindrelay

# The relay reads config/default.toml, then config/{APP_ENV}.toml, relative to
# its working directory; CONFIG_DIR names the directory absolutely, so a
# different working directory (a pod's workingDir, say) does not lose them.
# The files belong to root and are read-only for the relay. Secrets never go
# in them: pass them as environment variables (or from a secret store).
WORKDIR /app
COPY config/ /app/config/
ENV APP_ENV=production \
    CONFIG_DIR=/app/config

# HOST already defaults to 0.0.0.0 and PORT to 8080 (src/settings.rs), so
# neither is set here. The image listens on an unprivileged port: no
# capability is needed, and all of them can be dropped at run time.
EXPOSE 8080

# A numeric UID, so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532

# On SIGTERM (or SIGINT) the relay drains itself: /ready turns 503, new
# upgrades are refused, every session is closed with 1012, and the process
# exits 0 within SHUTDOWN_TIMEOUT_MS (25 s by default). Give the container
# runtime a longer stop timeout than that (`docker stop -t 30`,
# stop_grace_period, terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# `blindrelay healthcheck` asks /live of the instance on this container's PORT
# and exits 0 or 1; the image has no curl or shell to do it otherwise.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/blindrelay", "healthcheck"]

# Exec form: the relay is PID 1 and receives SIGTERM itself. It installs its
# own SIGTERM and SIGINT handlers and starts no child processes, so there are
# no zombies to reap and no init (tini, dumb-init) is needed.
ENTRYPOINT ["/usr/local/bin/blindrelay"]
