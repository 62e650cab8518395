//! The Mistral family (`model_type` mistral): Llama's decoder whose attention always applies its
//! `sliding_window` (no `use_sliding_window` switch): a sequence longer than the window is refused, not windowed.

use crate::config::{no_extras, Family, Variants};
use crate::llama::LLAMA_FIELDS;

/// Mistral: Llama with an active sliding window.
pub const MISTRAL: Family = Family {
    model_type: "mistral",
    fields: LLAMA_FIELDS,
    variants: Variants { sliding_window_by_default: true, ..Variants::LLAMA },
    read: no_extras,
};
