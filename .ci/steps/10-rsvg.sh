#!/usr/bin/env bash
# rsvg-convert (Debian's librsvg2-bin) lets the CLI tests render `plan --svg` output, not only check that it is
# well formed. Checked by package status and installed when missing (.ci/lib/apt.sh); when it cannot be
# installed (not root, no registry) a loud note, and the test checks well-formedness only.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
if ensure_debs librsvg2-bin; then
    echo "rsvg-convert: $(rsvg-convert --version)"
else
    echo "!!! NOTE: could not install librsvg2-bin: plan --svg is checked for well-formedness only"
fi
exit 0
