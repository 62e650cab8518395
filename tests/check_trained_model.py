#!/usr/bin/env python3
"""Checks that transformers (and peft) load what `neuron-spec train` + `consolidate` wrote, offline, and that
it computes what torch's training computed.

    python3 tests/check_trained_model.py full <out_dir> <base_hf_dir> <train_golden.safetensors> [prefix]
    python3 tests/check_trained_model.py lora <out_dir> <adapter_name> <base_hf_dir> <peft_dir> <train_golden_lora.safetensors> [prefix]

full: `AutoModelForCausalLM.from_pretrained(out_dir)` against the base model with every parameter set from the
golden's `<prefix>.*` (default after3; torch's parameters after training); their logits on the golden's
`input_ids` must agree within 1e-4 (eager attention, f32).

lora: `PeftModel.from_pretrained(from_pretrained(out_dir), out_dir/<adapter_name>)` (missing or unexpected keys
raise) against `PeftModel.from_pretrained(base, peft_dir)` with its factors set from the golden's `<prefix>.*`
(peft's names, set with `set_peft_model_state_dict`); logits within 1e-4.

Exit 0 when the check holds, 1 otherwise. Without torch/transformers/peft it prints a loud SKIPPED banner and
exits 0; NEURON_SPEC_REQUIRE_PEFT=1 makes that exit 4.
"""

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

TOL = 1e-4


def logits(model, ids):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def main() -> int:
    args = sys.argv[1:]
    if not args or (args[0], len(args)) not in {("full", 4), ("full", 5), ("lora", 6), ("lora", 7)}:
        print(__doc__)
        return 2
    try:
        import torch
        from peft import PeftModel, set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM
    except Exception as e:  # ImportError, or a torch build that cannot load its libraries
        bar = "!" * 78
        print(f"{bar}\n!!! SKIPPED: torch/transformers/peft unavailable ({type(e).__name__}: {e})\n{bar}")
        return 4 if os.environ.get("NEURON_SPEC_REQUIRE_PEFT") == "1" else 0
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    mode = args[0]
    if mode == "full":
        out, base_dir, golden = args[1:4]
        prefix = args[4] if len(args) > 4 else "after3"
        g = load_file(golden)
        ours = AutoModelForCausalLM.from_pretrained(out, **kw)
        ref = AutoModelForCausalLM.from_pretrained(base_dir, **kw)
        trained = {k[len(prefix) + 1 :]: v for k, v in g.items() if k.startswith(prefix + ".")}
        missing, unexpected = ref.load_state_dict(trained, strict=False)
        # Tied embeddings: lm_head.weight is the embedding, not a state dict entry of its own in the golden.
        missing = [m for m in missing if not (m == "lm_head.weight" and ref.config.tie_word_embeddings)]
        if missing or unexpected:
            print(f"golden {prefix}.* does not cover the model: missing {missing}, unexpected {unexpected}")
            return 1
        what = f"AutoModelForCausalLM.from_pretrained({out}) vs the base with {prefix}.* of {golden}"
    else:
        out, name, base_dir, peft_dir, golden = args[1:6]
        prefix = args[6] if len(args) > 6 else "after3"
        g = load_file(golden)
        ours = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out, **kw), os.path.join(out, name))
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, **kw), peft_dir)
        trained = {k[len(prefix) + 1 :]: v for k, v in g.items() if k.startswith(prefix + ".")}
        res = set_peft_model_state_dict(ref, trained)
        if res.unexpected_keys:
            print(f"golden {prefix}.* has keys peft does not know: {res.unexpected_keys}")
            return 1
        n_lora = sum(1 for k, _ in ref.named_parameters() if "lora_" in k)
        if len(trained) != n_lora:
            print(f"golden {prefix}.* has {len(trained)} factors, the adapter {n_lora}")
            return 1
        what = f"PeftModel.from_pretrained({out}, {os.path.join(out, name)}) vs peft with {prefix}.* of {golden}"
    ids = g["input_ids"]
    a, b = logits(ours, ids), logits(ref, ids)
    base = logits(AutoModelForCausalLM.from_pretrained(base_dir, **kw), ids)
    diff = (a - b).abs().max().item()
    moved = (b - base).abs().max().item()
    print(f"{what}: max_abs_diff {diff:e} (tolerance {TOL:e}; training moved the logits by up to {moved:.3f})")
    ok = diff <= TOL and moved > 100 * TOL
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
