#!/usr/bin/env bash
# forward and train over MPI (issue 12): installs Open MPI and libclang (rsmpi's bindgen) from Debian when missing, then
# runs tests/mpi.rs and neuron-spec/tests/mpi_collectives.rs (mpirun -np 2 and 4 as root). Only these two test
# targets and the binary are built. The feature still recompiles burn once: rsmpi's dependencies change features
# of crates burn shares (once_cell). That took 6.5 min on the loaded 2-core dev machine.
set -euo pipefail
need=()
command -v mpirun >/dev/null || need+=(openmpi-bin)
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi
cargo test --workspace --features neuron-spec-cli/mpi --test mpi --test mpi_collectives
