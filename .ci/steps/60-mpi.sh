#!/usr/bin/env bash
# forward and train over MPI: Open MPI (openmpi-bin for mpirun, libopenmpi-dev for the library rsmpi links)
# and libclang-dev (the libclang.so that rsmpi's bindgen loads) from Debian, checked by package status and
# installed when missing (.ci/lib/apt.sh), then tests/mpi.rs and neuron-spec/tests/mpi_collectives.rs
# (mpirun -np 2 and 4 as root). Only these two test targets and the binary are built.
set -euo pipefail
source "$(dirname "$0")/../lib/apt.sh"
ensure_debs openmpi-bin libopenmpi-dev libclang-dev
cargo test --workspace --features neuron-spec-cli/mpi --test mpi --test mpi_collectives
