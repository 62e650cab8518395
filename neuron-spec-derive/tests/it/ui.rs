//! Compile-time behaviour of the derive: every misuse fails with a spanned message (`tests/ui`), and the
//! accepted forms compile without warnings and run (`tests/ui_pass`).
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p neuron-spec-derive --test it ui`,
//! then read every `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui_pass/*.rs");
}
