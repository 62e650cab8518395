#!/usr/bin/env bash
# The README's first command, as written: shard, forward against the golden, consolidate, round trip.
set -euo pipefail
cargo run --bin neuron-spec -- quickstart
