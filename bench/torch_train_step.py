"""Training steps of the bench's Llama-shaped model in torch on CPU (f32, eager attention, AdamW).

Usage: python3 torch_train_step.py CONFIG_JSON BATCH SEQ [STEPS [THREADS]]; prints STEP and CPU (wall and
process CPU seconds of the best step after the first), FORWARD (an inference forward pass with the loss, under
no_grad) and VmHWM.
"""
import json
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    cfg = LlamaConfig(**json.load(open(sys.argv[1])))
    cfg._attn_implementation = "eager"
    batch, seq = int(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    if len(sys.argv) > 5:
        torch.set_num_threads(int(sys.argv[5]))
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    ids = torch.tensor([[(b * 7919 + t * 104729) % cfg.vocab_size for t in range(seq)] for b in range(batch)])
    times = []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(times[1:])
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.item()
        fwd = time.perf_counter() - t0
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    print(f"STEP {wall}\nCPU {cpu}\nFORWARD {fwd}\nTHREADS {torch.get_num_threads()}\nVmHWM {int(hwm) * 1024}")


if __name__ == "__main__":
    main()
