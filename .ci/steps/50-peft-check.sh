#!/usr/bin/env bash
# transformers and peft load what `neuron-spec consolidate` writes, offline (tests/check_peft_adapter.py):
# the base model from OUT, the adapter from OUT/default reproducing peft's golden logits; and what `train`
# wrote, fully or as an adapter, computing what torch's training computed (tests/check_trained_model.py).
#
# Python packages live in a cached venv OUTSIDE the clone ($NEURON_SPEC_VENV, default
# ${XDG_CACHE_HOME:-$HOME/.cache}/neuron-spec-venv), created on first use from the package registry (torch from
# PyPI pulls the CUDA wheels: several GB and minutes the first time; reused afterwards). Without Python or
# a registry the step prints a LOUD skip and succeeds; NEURON_SPEC_REQUIRE_PEFT=1 makes a skip fail.
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
if have_pkgs; then
    echo "venv: found $VENV ($("$VENV/bin/python" -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)'))"
else
    command -v python3 >/dev/null || skip "no python3"
    echo "venv: none usable at $VENV: creating it (${PKGS[*]})"
    start=$(date +%s)
    python3 -m venv "$VENV" || skip "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q "${PKGS[@]}" || skip "pip install ${PKGS[*]} failed (no package registry?)"
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
# optimum-neuron's own adapter checkpoints (adapter_default/adapter_shards/, plain and xser): the consolidated
# adapter loads in peft and gives peft's logits with the reference's to_original_weights output.
for k in tp4-lora-plain tp4-lora-xser tp2-lora-plain; do
    "$BIN" -q consolidate "$F/on-ckpt/llama-gqa-$k" "$WORK/on-lora-$k"
    "$VENV/bin/python" tests/check_peft_adapter.py "$WORK/on-lora-$k" default "$F/on-ckpt/golden_lora_mean.safetensors"
done
# Trained exports (tests/check_trained_model.py): the golden recipe through the CLI, then transformers / peft
# load the consolidated output and its logits equal torch's trained model's (parameters from the golden).
HP=(--lr 1e-2 --betas 0.9,0.999 --eps 1e-6 --weight-decay 0.01)
# (a) full fine-tuning at tp 4 (kv heads tiled twice), 3 steps.
"$BIN" -q train "$F/llama-gqa" "$WORK/full" --tp 4 --fuse-qkv --data "$F/llama-gqa/train_golden.safetensors" \
    --steps 3 "${HP[@]}" >/dev/null
"$BIN" -q consolidate "$WORK/full" "$WORK/full-hf"
"$VENV/bin/python" tests/check_trained_model.py full "$WORK/full-hf" "$F/llama-gqa" \
    "$F/llama-gqa/train_golden.safetensors"
# The trained folder is complete: transformers loads its tokenizer (carried from llama-gqa), which encodes and
# applies the chat template as the original folder's does.
HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$WORK/full-hf" "$F/llama-gqa" <<'PY'
import sys
from transformers import AutoTokenizer
out, src = (AutoTokenizer.from_pretrained(d) for d in sys.argv[1:3])
text = "The fox sat by the river and"
assert out(text)["input_ids"] == src(text)["input_ids"], (out(text), src(text))
chat = [{"role": "user", "content": text}]
assert out.apply_chat_template(chat, add_generation_prompt=True) == src.apply_chat_template(chat, add_generation_prompt=True)
print(f"transformers loads the trained folder's tokenizer ({len(out)} tokens) and chat template")
PY
# (b) LoRA-only: the adapter trained 3 steps (1, then resumed for 2), exported as a PEFT directory.
"$BIN" -q train "$F/llama-gqa" "$WORK/lora1" --tp 4 --fuse-qkv --adapter "$F/llama-gqa-lora" \
    --data "$F/llama-gqa-lora/train_golden_lora.safetensors" --steps 1 "${HP[@]}" >/dev/null
"$BIN" -q train "$WORK/lora1" "$WORK/lora3" --data "$F/llama-gqa-lora/train_golden_lora.safetensors" \
    --steps 2 "${HP[@]}" >/dev/null
"$BIN" -q consolidate "$WORK/lora3" "$WORK/lora-hf"
"$VENV/bin/python" tests/check_trained_model.py lora "$WORK/lora-hf" default "$F/llama-gqa" \
    "$F/llama-gqa-lora" "$F/llama-gqa-lora/train_golden_lora.safetensors"
