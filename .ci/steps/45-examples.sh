#!/usr/bin/env bash
# The examples a user copies (examples/): a custom model annotated from scratch (tp 2 on threads, consolidated
# back), and a training loop in the library API (losses torch's). Each checks its own result and fails
# otherwise; their times are printed.
set -euo pipefail
for example in custom_model train_loop; do
    start=$(date +%s)
    cargo run --example "$example"
    echo "example $example: ok in $(( $(date +%s) - start )) s"
done
