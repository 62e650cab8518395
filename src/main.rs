//! The `neuron-spec` command line: argument parsing and output; `forward`, `train` and `generate` are one call
//! each into the runtime of `neuron-spec-models` (the config's `model_type` picks the family).

#[macro_use]
mod out;
mod adapter_args;
mod cli;
mod comm_arg;
mod error;
mod exit;
mod generate_cmd;
mod inspect_cmd;
mod layouts;
mod plan_cmd;
mod plan_svg;
mod progress_bar;
mod train_cmd;

fn main() {
    let code = cli::main_with();
    // For tests/it/memory_bound.rs: this process's own peak RSS (wait4's rusage would count the parent's too).
    if std::env::var_os("NEURON_SPEC_REPORT_VMHWM").is_some() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(v) = status.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
            eprintln!("neuron-spec: VmHWM {}", v.trim());
        }
    }
    std::process::exit(code);
}
