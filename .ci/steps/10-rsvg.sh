#!/usr/bin/env bash
# rsvg-convert (Debian's librsvg2-bin) lets tests/cli_edges.rs render `plan --svg` output, not only check that
# it is well formed. Installed when missing and we are root with apt-get; otherwise a loud note (the test then
# checks well-formedness only).
set -euo pipefail
if command -v rsvg-convert >/dev/null; then
    echo "rsvg-convert: $(rsvg-convert --version)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get install -y -q librsvg2-bin >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q librsvg2-bin >/dev/null; } \
        || echo "!!! NOTE: could not install librsvg2-bin: plan --svg is checked for well-formedness only"
    command -v rsvg-convert >/dev/null && echo "installed rsvg-convert: $(rsvg-convert --version)"
else
    echo "!!! NOTE: no rsvg-convert and no root apt-get: plan --svg is checked for well-formedness only"
fi
exit 0
