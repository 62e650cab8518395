#!/usr/bin/env bash
set -euo pipefail
FUZZ_SECONDS=30 bash .ci/fuzz
