//! The CLI's own error: what the library refused or failed at, as it is, or a command that cannot run as
//! asked (an option that does not fit the input or the other options, a check of the command's own).

use neuron_spec::error::Error;

/// An error of a `neuron-spec` command; printed on one line (`error: ...`, exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The library's error (it names the file, the tensor, what was expected and what was found).
    #[error(transparent)]
    Library(#[from] Error),
    /// The command cannot run as asked; the message names the option or the input.
    #[error("{0}")]
    Command(String),
}

/// The CLI's result.
pub type Result<T> = std::result::Result<T, CliError>;
