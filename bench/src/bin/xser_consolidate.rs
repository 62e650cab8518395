//! The xser part of the bench alone (see `bench/src/xser.rs`):
//! `cargo run --release -p neuron-spec-bench --bin xser_consolidate [-- --layers 9 --dir /tmp/xser-bench]`.

#[path = "../finish.rs"]
mod finish;
#[path = "../xser.rs"]
mod xser;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("xser-op") {
        finish::finish(xser::run_op(&args[2..]).map(|()| vec![]), "");
    } else {
        // --python, else $NEURON_SPEC_BENCH_PYTHON (as the other benches), else python3.
        let python = args
            .iter()
            .position(|a| a == "--python")
            .and_then(|i| args.get(i + 1).cloned())
            .or_else(|| std::env::var("NEURON_SPEC_BENCH_PYTHON").ok())
            .unwrap_or_else(|| "python3".into());
        finish::finish(xser::report(&args, &python), "xser targets met");
    }
}
