//! The `.pt` readers on arbitrary bytes: the pickle machine (never executes anything, refuses unknown
//! classes, bounds sizes) and the stored-zip directory reader never panic, and what the zip reader accepts
//! lies inside the input. Bytes that form a zip are parsed as a torch file too (its `data.pkl`).

use neuron_spec::format::pt::{pickle, zip};

/// The target body.
pub fn run(data: &[u8]) {
    let _ = pickle::parse(data);
    if let Ok(records) = zip::records(data) {
        for r in &records {
            assert!(r.range.start <= r.range.end && r.range.end <= data.len(), "record {} out of bounds", r.name);
            if r.name.ends_with("data.pkl") {
                let _ = pickle::parse(&data[r.range.clone()]);
            }
        }
    }
}
