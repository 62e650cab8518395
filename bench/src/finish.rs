//! How each bench binary ends: exit 1 naming every missed target (or the error).

/// Prints `met` when `r` missed nothing; otherwise prints the error, or `targets missed: ...`, and exits 1.
pub fn finish(r: Result<Vec<String>, Box<dyn std::error::Error>>, met: &str) {
    match r {
        Ok(missed) if missed.is_empty() => {
            if !met.is_empty() {
                println!("{met}");
            }
        }
        Ok(missed) => {
            eprintln!("error: targets missed: {}", missed.join("; "));
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
