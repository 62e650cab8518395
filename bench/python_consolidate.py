"""Baseline: the reference's consolidation algorithm (optimum-neuron 0.4.5 `to_original_weights`), in torch.

Loads every rank file whole, concatenates and un-permutes as the reference does, and writes one
safetensors file with `save_file`, then fsyncs it (as the other timed runs do). Prints `SECONDS <s>`, the time
from after the imports to the fsync, and `VmHWM <bytes>`. Usage: python_consolidate.py <sharded_dir> <out_dir>
"""

import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

# The timed part starts here, after the interpreter started and torch was imported (the bench reads this
# script's own "SECONDS" line, not the process's wall time).
T0 = time.perf_counter()


def query_indices(tp, rank, heads, kv, mult):
    hpr = heads // tp
    kvpr = (kv * mult) // tp
    group = heads // kv
    gpr = hpr // kvpr
    keys = torch.repeat_interleave(torch.arange(kv).repeat(mult), hpr // kvpr)
    keys = torch.chunk(keys, tp)
    shift_per_key = torch.arange(0, heads, group)
    shift = torch.arange(0, group, gpr)
    shift = torch.repeat_interleave(shift, (kv // kvpr) * hpr)
    shift = torch.chunk(shift, tp)
    out = []
    for idx in range(kvpr):
        s = slice(idx * gpr, (idx + 1) * gpr)
        out.append(torch.arange(gpr) + shift_per_key[keys[rank][s]] + shift[rank][s])
    return torch.cat(out)


def unpermute(full, tp, heads, kv, mult, output):
    if output:
        full = full.transpose(0, 1)
    hidden = full.size(1)
    idx = torch.cat([query_indices(tp, r, heads, kv, mult) for r in range(tp)])
    rev = torch.sort(idx).indices
    full = full.reshape(heads, -1, hidden)[rev].reshape(-1, hidden)
    return full.transpose(0, 1) if output else full


def main(src, out):
    meta = json.load(open(os.path.join(src, "shards", "mp_metadata_pp_rank_0.json")))
    tp = meta["tp_size"]
    ranks = [
        load_file(os.path.join(src, "shards", "model", f"dp_rank_00_tp_rank_{r:02d}_pp_rank_00.safetensors"))
        for r in range(tp)
    ]
    sharded = {k: [r[k] for r in ranks] for k in ranks[0]}
    result, done = {}, set()
    for mod in meta["model_weight_transformation_specs"]:
        m = mod["module_fully_qualified_name"]
        for cls, s in mod["specs"]:
            if cls == "GQAQKVColumnParallelLinearSpec":
                qo, kvo = s["q_output_size_per_partition"], s["kv_output_size_per_partition"]
                h, kv, mult = s["num_attention_heads"], s["num_key_value_heads"], s["kv_size_multiplier"]
                g = s["gqa_qkv_projection_name"]
                if s["fuse_qkv"]:
                    w = sharded[f"{m}.{g}.weight_qkv"]
                    q = [x[:qo] for x in w]
                    k = [x[qo : qo + kvo] for x in w]
                    v = [x[qo + kvo :] for x in w]
                    done.add(f"{m}.{g}.weight_qkv")
                else:
                    q, k, v = (sharded[f"{m}.{g}.weight_{x}"] for x in "qkv")
                    done.update(f"{m}.{g}.weight_{x}" for x in "qkv")
                o_name = f"{m}.{s['output_projection_name']}.weight"
                result[f"{m}.{s['query_projection_name']}.weight"] = unpermute(torch.cat(q, 0), tp, h, kv, mult, False)
                result[f"{m}.{s['key_projection_name']}.weight"] = torch.chunk(torch.cat(k, 0), mult, 0)[0].clone()
                result[f"{m}.{s['value_projection_name']}.weight"] = torch.chunk(torch.cat(v, 0), mult, 0)[0].clone()
                result[o_name] = unpermute(torch.cat(sharded[o_name], 1), tp, h, kv, mult, True)
                done.add(o_name)
            elif cls == "FusedLinearsSpec":
                name = f"{m}.{s['fused_linear_name']}.weight"
                axis = s["fuse_axis"]
                parts = [torch.split(x, [d // tp for d in s["original_dims"]], dim=axis) for x in sharded[name]]
                pdim = meta["parameters"][name]["partition_dim"]
                for i, lin in enumerate(s["linear_names"]):
                    result[f"{m}.{lin}.weight"] = torch.cat([p[i] for p in parts], dim=pdim)
                done.add(name)
    for name, p in meta["parameters"].items():
        if name in done or name in result:
            continue
        if p["tensor_model_parallel"]:
            result[name] = torch.cat(sharded[name], dim=p["partition_dim"])
        else:
            result[name] = sharded[name][0]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "model.safetensors")
    save_file({k: v.contiguous() for k, v in result.items()}, path, metadata={"format": "pt"})
    # Flush to disk, as neuron-spec and the copy floor do, so all three are timed to durable output.
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def vm_hwm():
    """This process's own peak RSS: VmHWM (getrusage's ru_maxrss also counts the parent's RSS at spawn)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    print(f"SECONDS {time.perf_counter() - T0:.6f}")
    print(f"VmHWM {vm_hwm()}")
