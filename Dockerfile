# syntax=docker/dockerfile:1.7
#
# coredump-agent image: build with the project's toolchain, run on distroless.
#
#   docker build -t <registry>/coredump-agent:<version> .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/coredump-agent:<version> --push .
#
# The eBPF probe is not built here directly: the agent's build.rs builds it with aya-build
# (`cargo +nightly -Z build-std=core`, target bpfel-unknown-none, linked by bpf-linker) and
# embeds it in the agent binary. So the build stage needs what `cargo xtask setup` installs
# on a developer machine: stable Rust, a nightly with rust-src, LLVM 22 and bpf-linker built
# against it.

# Same Debian release as the runtime image below (glibc 2.36), and the release whose
# security suite ships LLVM 22.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG BPF_LINKER_VERSION=0.13.0
# The nightly that builds the probe (rustup's dist date). Its rustc must emit bitcode of the
# LLVM that bpf-linker is built against: the 2026-05-20 nightly is on LLVM 22, later ones
# (2026-10-30 for one) are on LLVM 23, whose bitcode bpf-linker 22 rejects ("Invalid record").
# Move it together with LLVM and BPF_LINKER_VERSION.
ARG RUST_NIGHTLY=2026-05-20

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ARG BPF_LINKER_VERSION
ARG RUST_NIGHTLY

# LLVM 22 (bpf-linker links the probe with it); clang and cmake for the C parts of
# aws-lc-sys and zstd-sys.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev clang cmake \
 && rm -rf /var/lib/apt/lists/*

# aya-build calls `cargo +nightly`, so the toolchain must be named `nightly`, and rustup
# accepts no dated nightly under that name (`rustup toolchain link nightly` is refused): the
# dated nightly is installed and its directory renamed, which `rustup run nightly` accepts.
RUN host="$(rustc -vV | sed -n 's/^host: //p')" \
 && rustup toolchain install "nightly-${RUST_NIGHTLY}" --profile minimal --component rust-src \
 && mv "${RUSTUP_HOME}/toolchains/nightly-${RUST_NIGHTLY}-${host}" \
       "${RUSTUP_HOME}/toolchains/nightly-${host}" \
 && rustup run nightly rustc --version --verbose | grep -x 'LLVM version: 22\..*'

RUN --mount=type=cache,target=/usr/local/cargo/registry \
    PATH="/usr/lib/llvm-22/bin:${PATH}" \
    cargo install --locked bpf-linker --version "${BPF_LINKER_VERSION}" \
      --no-default-features --features llvm-22

WORKDIR /src
COPY . .
# The workspace's target dir is a cache mount (fast rebuilds), so the binary is copied out
# of it before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --package coredump-agent \
 && install -D -m 0755 target/release/coredump-agent /out/coredump-agent

# Runtime: glibc, libgcc and CA certificates (the S3 and Kubernetes clients verify TLS
# against the system roots), nothing else. No shell: the agent needs none, the DaemonSet has
# no shell-based probes or hooks (the preStop hook execs the agent itself), and an attacker
# who gets code execution finds no tools.
# Runs as root (the default user of this image): the DaemonSet's securityContext says why,
# and which capabilities it keeps. For reproducible builds, pin the base by digest.
FROM gcr.io/distroless/cc-debian12 AS runtime
COPY --from=build /out/coredump-agent /usr/local/bin/coredump-agent
# 9102: /healthz, /readyz, /metrics.
EXPOSE 9102
ENTRYPOINT ["/usr/local/bin/coredump-agent"]
CMD ["run"]
