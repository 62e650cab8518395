//! A trained checkpoint written by one process per rank (feature `mpi`): each process writes its own rank
//! files, rank 0 the metadata from the sizes and checksums the others send it, and the output is renamed into
//! place only once every rank has reported success.
//!
//! The protocol, every step a collective (so a rank that fails tells the others instead of leaving them
//! waiting):
//! 1. rank 0 stages the output ([`Staging`]: a hidden sibling of the destination) and sends its name to the
//!    others, with a token it wrote into it;
//! 2. every rank checks it sees that token (the destination must be on a file system every process sees),
//!    writes its rank file of the weights and of each moment, and sends rank 0 their sizes and checksums;
//! 3. rank 0 writes the metadata, `config.json` and `state.json`, and renames the staging directory.
//!
//! A failure at any step is every rank's error, and rank 0 removes the staging directory: nothing is left.

use super::save::{write_trained_metadata, write_trained_rank, RankWritten};
use super::{AdamWConfig, OptimizerState};
use crate::checkpoint::atomic::{describe_under, Staging};
use crate::comm::{Communicator, MpiCommunicator};
use crate::error::{Error, Result};
use crate::spec::metadata::CheckpointMetadata;
use crate::tensor::StateDict;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

/// The file rank 0 writes into its staging directory for the others to find (removed before the commit).
const MARKER: &str = ".neuron-spec-staging";

/// Gathers every rank's outcome: every rank's payload when all succeeded; otherwise, on every rank, the error
/// of the lowest failing rank as `rank R/N: <its message>`.
fn agree(comm: &MpiCommunicator, mine: Result<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
    let ctx = comm.context();
    let msg = match mine {
        Ok(p) => [&[0u8][..], &p].concat(),
        Err(e) => [&[1u8][..], e.to_string().as_bytes()].concat(),
    };
    let all = comm.all_gather_bytes(&msg)?;
    if let Some((r, m)) = all.iter().enumerate().find(|(_, m)| m.first() != Some(&0)) {
        let text = String::from_utf8_lossy(m.get(1..).unwrap_or_default());
        return Err(Error::Collective(format!("rank {r}/{}: {text}", ctx.size)));
    }
    Ok(all.into_iter().map(|m| m[1..].to_vec()).collect())
}

/// A token no other run shares (the clock and the process, hashed with a per-process random key).
fn token() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:016x}", h.finish())
}

/// Writes this process's rank of a trained checkpoint to `out_dir` (see the module docs); every rank of `comm`
/// calls it together, with its own trained tensors and AdamW state. `meta` is the model's layout,
/// `config_dir`'s non-weight files are copied along (by rank 0). Returns the same error on every rank when any
/// rank failed, and then leaves nothing at `out_dir` (an existing `out_dir` is replaced, with `force`, only by
/// a complete output).
#[allow(clippy::too_many_arguments)]
pub fn write_trained_checkpoint_mpi(
    comm: &MpiCommunicator,
    out_dir: &Path,
    config_dir: &Path,
    meta: &CheckpointMetadata,
    weights: &StateDict,
    state: &OptimizerState,
    adamw: &AdamWConfig,
    force: bool,
) -> Result<()> {
    let rank = comm.context().rank;
    // 1. Rank 0 stages and announces where.
    let mut staging: Option<Staging> = None;
    let announced = if rank == 0 {
        (|| {
            let s = Staging::new(out_dir, force)?;
            let name = s.path().file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let t = token();
            let marker = s.path().join(MARKER);
            std::fs::write(&marker, &t).map_err(|e| s.describe(Error::io(&marker, e)))?;
            staging = Some(s);
            Ok(format!("{name}\n{t}").into_bytes())
        })()
    } else {
        Ok(Vec::new())
    };
    let all = agree(comm, announced)?;
    let announced = String::from_utf8_lossy(&all[0]).to_string();
    let (name, t) = announced.split_once('\n').unwrap_or((&announced, ""));
    let root = Staging::sibling_named(out_dir, name);

    // 2. Every rank writes its own rank files into rank 0's staging directory.
    let mine = (|| {
        if rank != 0 {
            let seen = std::fs::read_to_string(root.join(MARKER)).unwrap_or_default();
            if seen != t {
                return Err(Error::Checkpoint(format!(
                    "rank 0's staging directory {} is not visible here: the output {} must be on a file system \
                     every process sees (a shared file system across hosts)",
                    root.display(),
                    out_dir.display()
                )));
            }
        }
        let w = write_trained_rank(&root, rank, weights, state).map_err(|e| describe_under(&root, out_dir, e))?;
        serde_json::to_vec(&w).map_err(|e| Error::Serialization(format!("rank {rank}'s report: {e}")))
    })();
    // On failure rank 0's `staging` is dropped here, which removes the directory and every rank's files.
    let all = agree(comm, mine)?;

    // 3. Rank 0 writes the metadata from every rank's report and commits.
    let committed = match staging.take() {
        Some(s) => (|| {
            let written = all
                .iter()
                .enumerate()
                .map(|(r, b)| {
                    serde_json::from_slice::<RankWritten>(b)
                        .map_err(|e| Error::Serialization(format!("rank {r}'s report does not parse: {e}")))
                })
                .collect::<Result<Vec<_>>>()?;
            let marker = s.path().join(MARKER);
            std::fs::remove_file(&marker).map_err(|e| s.describe(Error::io(&marker, e)))?;
            write_trained_metadata(s.path(), config_dir, meta, (weights, state), &written, adamw)
                .map_err(|e| s.describe(e))?;
            s.commit()
        })(),
        None => Ok(()),
    };
    agree(comm, committed.map(|_| Vec::new())).map(|_| ())
}
