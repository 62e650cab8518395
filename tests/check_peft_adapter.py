#!/usr/bin/env python3
"""Checks that peft loads an adapter exported by `neuron-spec consolidate` unchanged, and that its logits match.

    python3 tests/check_peft_adapter.py <base_hf_dir> <adapter_dir> <golden_lora.safetensors>

For example, after the README's LoRA workflow:

    python3 tests/check_peft_adapter.py tests/fixtures/llama-gqa /tmp/lora/hf tests/fixtures/llama-gqa-lora/golden_lora.safetensors

It loads `LlamaForCausalLM` from the base directory (eager attention, f32), wraps it with
`PeftModel.from_pretrained(model, adapter_dir)` without editing anything, runs the golden's `input_ids` and
compares the logits with the golden's (tolerance 1e-4). Optional: it exits 0 with "skipped" when torch,
transformers or peft cannot be imported, so it never fails a machine without them.
"""

import sys


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    base, adapter, golden = sys.argv[1:]
    try:
        import torch
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import LlamaForCausalLM
    except Exception as e:  # ImportError, or a torch build that cannot load its libraries
        print(f"skipped: torch/transformers/peft unavailable ({type(e).__name__}: {e})")
        return 0
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="eager")
    model = PeftModel.from_pretrained(model, adapter)  # raises on missing or unexpected adapter keys
    model.eval()
    g = load_file(golden)
    with torch.no_grad():
        logits = model(input_ids=g["input_ids"], use_cache=False).logits
    diff = (logits - g["logits"]).abs().max().item()
    print(f"peft loaded {adapter}: max_abs_diff {diff:e}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
