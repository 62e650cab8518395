//! The bench's exit code: a failure is exit 1, never 0.

#[test]
fn a_failing_run_exits_1() {
    let bin = env!("CARGO_BIN_EXE_neuron-spec-bench");
    let o = std::process::Command::new(bin).args(["op", "no-such-op"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown op"), "{}", String::from_utf8_lossy(&o.stderr));
}
