//! The training part of the bench alone: one training step of the `wide` (~112M) and `deep` (SmolLM-135M
//! shape) Llama models at tp 1 on both CPU backends and at higher tp, side by side with torch (see
//! `bench/src/train.rs`; torch runs with `$NEURON_SPEC_BENCH_PYTHON` or `python3`).
//!
//! ```sh
//! cargo run --release -p neuron-spec-bench --bin train_step [-- --small] [-- --shape deep]
//! ```

#[path = "../finish.rs"]
mod finish;
#[path = "../train.rs"]
mod train;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("train-child") {
        finish::finish(train::child(&args[2..]).map(|()| vec![]), "");
    } else {
        let small = args.iter().any(|a| a == "--small");
        let shapes: Vec<&str> = match args.iter().position(|a| a == "--shape").and_then(|i| args.get(i + 1)) {
            Some(s) => vec![s.as_str()],
            None => vec!["wide", "deep"],
        };
        let py = std::env::var("NEURON_SPEC_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
        finish::finish(train::report(&shapes, small, &py), "train targets met");
    }
}
