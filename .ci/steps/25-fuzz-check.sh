#!/usr/bin/env bash
# The cargo-fuzz package is outside the workspace (its own lock file): check that it still builds against the
# library (the bodies it calls are tested in step 20, fuzz/bodies/tests/replay.rs).
set -euo pipefail
cargo check --manifest-path fuzz/Cargo.toml --bins --target-dir "${CARGO_TARGET_DIR:-target}/fuzz-check"
