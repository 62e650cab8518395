//! The `neuron-spec` command line, with the example Llama model behind `forward`.

fn main() {
    std::process::exit(neuron_spec::cli::main_with(None));
}
