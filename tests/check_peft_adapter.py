#!/usr/bin/env python3
"""Checks that transformers and peft load a folder written by `neuron-spec consolidate` as they are, offline.

    python3 tests/check_peft_adapter.py <out_dir> <adapter_name> <golden_lora.safetensors>

For example, after the README's LoRA workflow:

    python3 tests/check_peft_adapter.py /tmp/lora/hf default tests/fixtures/llama-gqa-lora/golden_lora.safetensors

With the Hub switched off (HF_HUB_OFFLINE=1), it checks exactly:

1. `AutoModelForCausalLM.from_pretrained(out_dir)` loads the base model (the folder is not taken for an
   adapter, nothing is fetched);
2. `PeftModel.from_pretrained(base, out_dir/<adapter_name>)` loads the adapter without editing anything
   (missing or unexpected keys raise), and its logits on the golden's `input_ids` equal the golden's within
   1e-4 (eager attention, f32);
3. `AutoPeftModelForCausalLM.from_pretrained(out_dir/<adapter_name>)` finds its base through
   `base_model_name_or_path` and gives the same logits.

Exit 0 when all hold, 1 otherwise. Optional: without torch/transformers/peft it prints a loud SKIPPED banner
and exits 0 (so a machine without them never fails); set NEURON_SPEC_REQUIRE_PEFT=1 to make that exit 4.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TOL = 1e-4


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    out, name, golden = sys.argv[1:]
    try:
        import torch
        from peft import AutoPeftModelForCausalLM, PeftModel
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
    except Exception as e:  # ImportError, or a torch build that cannot load its libraries
        bar = "!" * 78
        print(f"{bar}\n!!! SKIPPED: torch/transformers/peft unavailable ({type(e).__name__}: {e})\n{bar}")
        return 4 if os.environ.get("NEURON_SPEC_REQUIRE_PEFT") == "1" else 0
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    g = load_file(golden)
    ok = True

    base = AutoModelForCausalLM.from_pretrained(out, **kw)
    print(f"1. AutoModelForCausalLM.from_pretrained({out}): {type(base).__name__}, offline")

    adapter_dir = os.path.join(out, name)
    model = PeftModel.from_pretrained(base, adapter_dir)  # raises on missing or unexpected adapter keys
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=g["input_ids"], use_cache=False).logits
    diff = (logits - g["logits"]).abs().max().item()
    print(f"2. PeftModel.from_pretrained(base, {adapter_dir}): max_abs_diff {diff:e} (tolerance {TOL:e})")
    ok &= diff <= TOL

    auto = AutoPeftModelForCausalLM.from_pretrained(adapter_dir, **kw)
    auto.eval()
    with torch.no_grad():
        logits = auto(input_ids=g["input_ids"], use_cache=False).logits
    diff = (logits - g["logits"]).abs().max().item()
    print(f"3. AutoPeftModelForCausalLM.from_pretrained({adapter_dir}): max_abs_diff {diff:e}")
    ok &= diff <= TOL
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
