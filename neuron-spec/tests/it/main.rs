//! The library's tests, one binary: each module was a test file of its own. `tests/mpi_collectives.rs` (the
//! `mpi` feature) stays a binary of its own.

mod pickle_mutations;
mod proptest_specs;
