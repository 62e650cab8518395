//! The xser part of the bench alone (see `bench/src/xser.rs`):
//! `cargo run --release -p neuron-spec-bench --bin xser_consolidate [-- --layers 9 --dir /tmp/xser-bench]`.

#[path = "../xser.rs"]
mod xser;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = if args.get(1).map(String::as_str) == Some("xser-op") {
        xser::run_op(&args[2..])
    } else {
        // --python, else $NEURON_SPEC_BENCH_PYTHON (as the other benches), else python3.
        let python = args
            .iter()
            .position(|a| a == "--python")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| std::env::var("NEURON_SPEC_BENCH_PYTHON").ok())
            .unwrap_or_else(|| "python3".into());
        xser::report(&args, &python).and_then(|missed| {
            if missed.is_empty() {
                Ok(())
            } else {
                Err(format!("targets missed: {}", missed.join("; ")).into())
            }
        })
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
