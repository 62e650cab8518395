"""Greedy generation with transformers' `generate` (KV cache) on CPU, f32, for the bench.

Usage: python3 hf_generate.py MODEL_DIR THREADS PROMPT_LEN NEW_TOKENS; prints SECONDS (the timed generate,
after a short warm-up), CPU (its process CPU seconds), IDS (the new ids) and VmHWM.
"""
import sys
import time

import torch
from transformers import LlamaForCausalLM


def main():
    path, threads, plen, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[(t * 104729 + 7) % vocab for t in range(plen)]])
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0, attention_mask=mask)
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
        t0, c0 = time.perf_counter(), time.process_time()
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    new_ids = " ".join(str(int(x)) for x in out[0, plen:])
    print(f"SECONDS {secs}\nCPU {cpu}\nIDS {new_ids}\nTHREADS {torch.get_num_threads()}\nVmHWM {int(hwm) * 1024}")


if __name__ == "__main__":
    main()
