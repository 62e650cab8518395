#!/usr/bin/env bash
# The mdBook in docs/ builds (output in docs/book/, ignored by git). Its Rust snippets are doctests of the
# library crates (included under #[cfg(doctest)]), so step 20's `cargo test --workspace` runs them.
set -euo pipefail
if command -v mdbook >/dev/null 2>&1; then
    echo "36-book: found $(command -v mdbook) ($(mdbook --version))"
else
    echo "36-book: mdbook missing, installing: cargo install mdbook --locked --no-default-features"
    cargo install mdbook --locked --no-default-features
    echo "36-book: installed $(command -v mdbook) ($(mdbook --version))"
fi
mdbook build docs
