#!/usr/bin/env bash
# The library docs build without warnings (broken links, missing docs); rustdoc examples run in step 20.
set -euo pipefail
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
