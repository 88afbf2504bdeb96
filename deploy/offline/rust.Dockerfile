# A Rust builder image for deploy/Dockerfile where no registry is reachable: the local Debian
# base (scripts/compose-proof.sh makes it with debootstrap) plus the host's Rust toolchain,
# laid out like the official rust:*-slim image (RUSTUP_HOME, CARGO_HOME, cargo on PATH), with
# the packages that image installs for linking (gcc, libc6-dev) and for crates.io
# (ca-certificates). Build context: a folder holding `toolchain/` (bin/ and lib/ of one
# rustup toolchain) and `ca-certificates/` (the build machine's local CA certificates, maybe
# none: where egress goes through a TLS-inspecting proxy, cargo in the image must trust what
# the host trusts to reach crates.io); scripts/compose-proof.sh prepares it.
ARG BASE_IMAGE=ftshop-local/debian:trixie
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rustup/toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
COPY toolchain /usr/local/rustup/toolchain
RUN install -d /usr/local/cargo/bin && cargo --version && rustc --version
