//! Error collection, so one build reports every misuse instead of the first.

/// The errors found so far, combined into one `syn::Error`.
#[derive(Default)]
pub(crate) struct Errors {
    all: Option<syn::Error>,
}

impl Errors {
    /// Records an error; the first recorded is reported first.
    pub fn push(&mut self, error: syn::Error) {
        match &mut self.all {
            Some(all) => all.combine(error),
            None => self.all = Some(error),
        }
    }

    /// `Err` with every recorded error, if any.
    pub fn finish(self) -> syn::Result<()> {
        self.all.map_or(Ok(()), Err)
    }
}
