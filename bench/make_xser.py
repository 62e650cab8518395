"""Rewrites a neuron-spec sharded checkpoint (safetensors rank files) in optimum-neuron's xser layout, the way
the fixtures' on-ckpt/ checkpoints were made from tp-ref/: for each rank file,

    <name>.pt                 torch.save(state dict of TensorReference(tid))
    <name>.pt.info.pt         torch.save({tid: {"dtype", "shape", "expert_model_parallel": False}})
    <name>.pt.tensors/tensor_<tid>.pt   torch.save(tensor)

plus shards/mp_metadata_pp_rank_<P>.json without our checksums, config.json, and the `checkpoint`/`done`
markers. Usage: python make_xser.py <sharded_dir> <out_dir>   (needs torch and safetensors)
"""
import json
import os
import shutil
import sys
import types

import torch
from safetensors.torch import load_file

# neuronx-distributed pickles torch_xla.utils.serialization.TensorReference; torch_xla is not needed to write
# the same pickle: a class of that qualified name whose state is {"tid": int}.
mod = types.ModuleType("torch_xla.utils.serialization")


class TensorReference:
    def __init__(self, tid):
        self.tid = tid


TensorReference.__module__ = "torch_xla.utils.serialization"
mod.TensorReference = TensorReference
for name in ["torch_xla", "torch_xla.utils", "torch_xla.utils.serialization"]:
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["torch_xla.utils.serialization"] = mod


def main(src, dst):
    os.makedirs(os.path.join(dst, "shards", "model"))
    for f in os.listdir(os.path.join(src, "shards")):
        if f.endswith(".json"):
            meta = json.load(open(os.path.join(src, "shards", f)))
            for k in ["rank_files", "format_version", "tp_size"]:
                meta.pop(k, None)
            for p in meta["parameters"].values():
                p.pop("shape", None)
                p.pop("dtype", None)
            json.dump(meta, open(os.path.join(dst, "shards", f), "w"), indent=2)
    for f in sorted(os.listdir(os.path.join(src, "shards", "model"))):
        sd = load_file(os.path.join(src, "shards", "model", f))
        base = os.path.join(dst, "shards", "model", f.replace(".safetensors", ".pt"))
        os.makedirs(base + ".tensors")
        refs, info = {}, {}
        for tid, (name, t) in enumerate(sorted(sd.items())):
            refs[name] = TensorReference(tid)
            info[tid] = {"dtype": t.dtype, "shape": t.shape, "expert_model_parallel": False}
            torch.save(t, os.path.join(base + ".tensors", f"tensor_{tid}.pt"))
        torch.save(refs, base)
        torch.save(info, base + ".info.pt")
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    for m in ["checkpoint", "done"]:
        open(os.path.join(dst, m), "w").write("1")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
