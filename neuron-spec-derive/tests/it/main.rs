//! The derive's tests, one binary: what the derived impl does (`expand`) and the trybuild UI tests (`ui`).

#[path = "../support/mocks.rs"]
#[allow(dead_code)]
mod mocks;

mod expand;
mod ui;
