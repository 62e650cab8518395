//! `MpiCommunicator` under `mpirun -np 4` (feature `mpi`): the test re-runs itself as 4 MPI processes, each
//! checking the collectives against hand-computed values and against `LocalCommunicator`. Skipped loudly
//! without mpirun.

use burn::tensor::{Device, Tensor, TensorData};
use neuron_spec::comm::{Communicator, LocalCommunicator, MpiCommunicator};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "NEURON_SPEC_MPI_COLLECTIVES_CHILD";
const NP: usize = 4;
/// Order-sensitive in f32 (see the expectations in `child`).
const VALS: [f32; NP] = [1.0e8, 1.0, -1.0e8, 3.0e-3];

fn values<const D: usize>(t: Tensor<D>) -> (Vec<usize>, Vec<f32>) {
    let shape = t.dims().to_vec();
    (shape, t.into_data().try_into_vec::<f32>().unwrap())
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// What one rank computes with `c`: (all-reduce, all-gather dim 1, all-gather dim 0, broadcast from 2).
fn collectives<C: Communicator>(c: &C) -> Vec<(Vec<usize>, Vec<f32>)> {
    let d = Device::default();
    let r = c.context().rank;
    let t = Tensor::<1>::from_data(TensorData::new(vec![VALS[r], VALS[NP - 1 - r]], [2]), &d);
    let sum = c.all_reduce_sum(t).unwrap();
    let rf = r as f32;
    let m = Tensor::<2>::from_data(
        TensorData::new(vec![10.0 * rf, 10.0 * rf + 1.0, 10.0 * rf + 2.0, 10.0 * rf + 3.0], [2, 2]),
        &d,
    );
    let g1 = c.all_gather(m.clone(), 1).unwrap();
    let g0 = c.all_gather(m.clone(), 0).unwrap();
    let b = c.broadcast(m, 2).unwrap();
    c.barrier().unwrap();
    vec![values(sum), values(g1), values(g0), values(b)]
}

fn child() {
    let comm = MpiCommunicator::init().unwrap();
    assert_eq!(comm.context().size, NP);
    let rank = comm.context().rank;
    let got = collectives(&comm);

    // Hand-computed expectations.
    // Element 0 in rank order: ((1e8 + 1) + -1e8) + 3e-3 = 3e-3 (1e8 + 1 rounds to 1e8); element 1:
    // ((3e-3 + -1e8) + 1) + 1e8 = 0. Any other order gives other bits (e.g. 1.003 for element 0).
    assert_eq!(bits(&got[0].1), bits(&[3.0e-3, 0.0]), "rank {rank}: rank-order sum");
    assert_eq!(got[1].0, vec![2, 8]);
    assert_eq!(got[1].1, vec![0., 1., 10., 11., 20., 21., 30., 31., 2., 3., 12., 13., 22., 23., 32., 33.]);
    assert_eq!(got[2].0, vec![8, 2]);
    assert_eq!(got[2].1, (0..NP).flat_map(|r| (0..4).map(move |i| (10 * r + i) as f32)).collect::<Vec<_>>());
    assert_eq!(got[3], (vec![2, 2], vec![20., 21., 22., 23.]), "broadcast from rank 2");

    // Bit for bit what the threaded communicator computes.
    let local = std::thread::scope(|s| {
        let hs: Vec<_> =
            LocalCommunicator::group(NP).unwrap().into_iter().map(|c| s.spawn(move || collectives(&c))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    for (a, b) in got.iter().zip(&local[rank]) {
        assert_eq!((a.0.clone(), bits(&a.1)), (b.0.clone(), bits(&b.1)), "rank {rank}: MPI vs threads");
    }

    // Host-side helpers and a shape mismatch (an error on every rank, not a hang).
    let bytes = comm.all_gather_bytes(&vec![rank as u8; rank + 1]).unwrap();
    assert_eq!(bytes, (0..NP).map(|r| vec![r as u8; r + 1]).collect::<Vec<_>>());
    let mut msg = if rank == 1 { b"from one".to_vec() } else { Vec::new() };
    comm.broadcast_bytes(&mut msg, 1).unwrap();
    assert_eq!(msg, b"from one");
    let n = 1 + rank;
    let t = Tensor::<1>::from_data(TensorData::new(vec![1.0f32; n], [n]), &Device::default());
    assert!(comm.all_reduce_sum(t).is_err());
    assert!(comm.broadcast(Tensor::<1>::zeros([1], &Device::default()), NP).is_err());
    comm.barrier();
    println!("rank {rank}: collectives ok");
}

#[test]
fn mpi_collectives_are_rank_ordered_and_equal_the_threaded_ones() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    if !matches!(Command::new("mpirun").arg("--version").stdout(Stdio::null()).status(), Ok(s) if s.success()) {
        eprintln!("\n*** SKIPPED: mpirun not found (install openmpi-bin and libopenmpi-dev) ***\n");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &NP.to_string(), "-x", CHILD])
        .arg(exe)
        .args(["--exact", "mpi_collectives_are_rank_ordered_and_equal_the_threaded_ones", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mpirun hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for r in 0..NP {
        assert!(stdout.contains(&format!("rank {r}: collectives ok")), "{stdout}");
    }
}
