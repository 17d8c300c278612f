# Shared by the demo, test and bench scripts: a Rust toolchain with rustfmt and clippy, and
# the Debian packages the build needs. Sourced, not run.

log() { printf '[%s] %s\n' "${EIP_SCRIPT:-eip}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_toolchain() {
    export PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null || { log "cargo is missing: install Rust with rustup first"; exit 1; }
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        log "adding rustfmt and clippy"
        rustup component add rustfmt clippy >/dev/null
    fi
}
