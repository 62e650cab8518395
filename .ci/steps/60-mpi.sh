#!/usr/bin/env bash
# forward over MPI (issue 12): installs Open MPI and libclang (rsmpi's bindgen) from Debian when missing, then
# runs tests/mpi.rs (mpirun -np 2 and 4 as root). Builds only the CLI package's binary and that test with
# `--features mpi`; burn is shared with step 20's build, so the extra compile is neuron-spec and the CLI.
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
cargo test -p neuron-spec-cli --features mpi --test mpi
