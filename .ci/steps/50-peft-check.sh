#!/usr/bin/env bash
# transformers and peft load what `neuron-spec consolidate` writes, offline (tests/check_peft_adapter.py):
# the base model from OUT, the adapter from OUT/default reproducing peft's golden logits.
#
# Python packages live in a cached venv OUTSIDE the clone ($NEURON_SPEC_VENV, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/neuron-spec-venv), created on first use when PyPI is reachable (torch from
# PyPI pulls the CUDA wheels: several GB and minutes the first time; reused afterwards). Without Python or
# PyPI the step prints a LOUD skip and succeeds; NEURON_SPEC_REQUIRE_PEFT=1 makes a skip fail.
set -euo pipefail
VENV=${NEURON_SPEC_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/neuron-spec-venv}
PKGS=(torch==2.8.0 transformers==4.57.1 peft==0.17.0 safetensors)
skip() {
    printf '%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    printf '!!! SKIPPED 50-peft-check: %s\n' "$1"
    printf '%s\n' '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    if [ "${NEURON_SPEC_REQUIRE_PEFT:-0}" = 1 ]; then exit 1; fi
    exit 0
}
have_pkgs() { "$VENV/bin/python" -c "import torch, transformers, peft, safetensors" 2>/dev/null; }
if ! have_pkgs; then
    command -v python3 >/dev/null || skip "no python3"
    python3 -c "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/peft/', timeout=10)" \
        2>/dev/null || skip "PyPI unreachable, and no usable venv at $VENV"
    start=$(date +%s)
    python3 -m venv "$VENV" || skip "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PKGS[@]}" || skip "pip install ${PKGS[*]} failed"
    echo "venv $VENV created in $(( $(date +%s) - start )) s"
    have_pkgs || skip "the venv at $VENV cannot import torch/transformers/peft"
fi
export NEURON_SPEC_REQUIRE_PEFT=1 # the packages are there now: a skip inside the check is a failure
cargo build -q --bin neuron-spec
BIN=target/debug/neuron-spec
F=tests/fixtures
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# The untrained import comes back unchanged: shard with the adapter, consolidate, load with transformers + peft.
"$BIN" -q shard "$F/llama-gqa" "$WORK/sharded" --tp 4 --fuse-qkv --adapter "$F/llama-gqa-lora"
"$BIN" -q consolidate "$WORK/sharded" "$WORK/hf"
"$VENV/bin/python" tests/check_peft_adapter.py "$WORK/hf" default "$F/llama-gqa-lora/golden_lora.safetensors"
# Hook for a trained export: once a `train` command exists, train a few steps here, consolidate, and check
# that peft loads it (its logits are then compared with the TP model's own, written by `forward --output`).
if "$BIN" train --help >/dev/null 2>&1; then
    echo "note: a train command exists; add its peft check here (see the comment above)"
fi
