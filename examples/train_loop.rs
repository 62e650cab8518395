//! A training loop in the library API: the fixture Llama at tp 2, one thread per rank, each rank loading its
//! own slices of the HF checkpoint and stepping its own `RankTrainer` (AdamW as torch's) over the same batch;
//! the losses are torch's (`tests/fixtures/llama-gqa/train_golden.safetensors`). Then the same run in one call
//! of the runtime (`Train`), which also writes the trained sharded checkpoint with its AdamW state.
//!
//! Run it: `cargo run --example train_loop`.

use neuron_spec::comm::{Communicator, LocalCommunicator};
use neuron_spec::format::SafetensorsFile;
use neuron_spec::train::{AdamWConfig, RankTrainer, TrainMode, TrainOptions};
use neuron_spec::{Error, Result, StateDict};
use neuron_spec_models::{run, Source, Train, Transport};
use std::path::Path;

const STEPS: usize = 3;
const TP: usize = 2;

fn main() -> Result<()> {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model = fixtures.join("llama-gqa");
    let golden = SafetensorsFile::open(&model.join("train_golden.safetensors"))?;
    let ids = golden.tensor("input_ids")?;
    let seq = ids.shape()[1];
    let batch: Vec<Vec<i64>> = ids.to_i64_vec()?.chunks(seq).map(<[i64]>::to_vec).collect();
    let torch = golden.tensor("loss")?.to_f32_vec();
    let adamw = AdamWConfig { lr: 1e-2, betas: (0.9, 0.999), eps: 1e-6, weight_decay: 0.01 };
    let options = TrainOptions { adamw, grad_clip: None, mode: TrainMode::Full };
    let source = Source::open(&model)?.fuse_qkv(true);

    // 1. By hand: a LocalCommunicator group, one thread per rank, the same loop on every rank.
    let comms = LocalCommunicator::group(TP)?;
    let losses: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .iter()
            .map(|comm| {
                let (source, batch) = (&source, &batch);
                s.spawn(move || -> Result<Vec<f32>> {
                    let device = burn::tensor::Device::default().autodiff();
                    // This rank's model: its slices of the HF checkpoint, layout checked.
                    let model = source.load(comm.context(), &device)?;
                    let mut trainer = RankTrainer::new(model, &StateDict::new(), options, &device)?;
                    let mut losses = Vec::new();
                    for _ in 0..STEPS {
                        // Forward, backward (the collectives' gradients), AdamW: every rank together.
                        losses.push(trainer.step(comm, |m, c| m.causal_lm_loss(batch, c))?);
                    }
                    Ok(losses)
                })
            })
            .collect();
        handles
            .into_iter()
            // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
            .map(|h| h.join().unwrap_or_else(|_| Err(Error::Invalid("a rank panicked".into()))))
            .collect()
    });
    let losses = losses.into_iter().collect::<Result<Vec<_>>>()?;
    for (step, loss) in losses[0].iter().enumerate() {
        println!("step {} loss {loss:.6} (torch {:.6})", step + 1, torch[step]);
        if ((loss - torch[step]) / torch[step]).abs() > 1e-4 {
            // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
            return Err(Error::Invalid(format!("step {}: loss {loss} is not torch's {}", step + 1, torch[step])));
        }
    }
    if losses.iter().any(|l| l != &losses[0]) {
        // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
        return Err(Error::Invalid("the ranks computed different losses".into()));
    }

    // 2. The same run in one call of the runtime, writing the trained checkpoint.
    let out = std::env::temp_dir().join(format!("neuron-spec-train-loop-{}", std::process::id()));
    let task = Train::new(vec![batch.clone()], STEPS, adamw).write_to(&out, false);
    let trained = run(&source, &Transport::threads(TP), &task)?;
    println!("runtime: losses {:?}, checkpoint {}", trained.losses, out.display());
    if trained.losses != losses[0] {
        // Invalid: the example's own check (a wrong result), not a library failure: no kind fits.
        return Err(Error::Invalid("the runtime's losses differ from the hand-written loop's".into()));
    }
    std::fs::remove_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    Ok(())
}
