//! One TP rank of a sharded checkpoint as one tensor source: its file in each pipeline stage, in stage order,
//! safetensors (ours) or `.pt` (optimum-neuron's). A name held by several stages (a tied embedding's copy)
//! is read from the first and recorded, so consolidation can check that the copies agree.

use crate::error::{Error, Result};
use crate::format::pt::PtRankFile;
use crate::format::SafetensorsFile;
use crate::tensor::HostTensor;
use crate::tensor::{TensorInfo, TensorSource};
use indexmap::IndexMap;
use std::path::Path;

/// One stage's file of a rank.
pub enum StageFile {
    /// Our layout.
    Safetensors(SafetensorsFile),
    /// optimum-neuron's `.pt` (plain or xser).
    Pt(PtRankFile),
}

impl StageFile {
    /// The file path.
    pub fn path(&self) -> &Path {
        match self {
            StageFile::Safetensors(f) => f.path(),
            StageFile::Pt(f) => f.path(),
        }
    }

    /// The file as a tensor source.
    pub fn source(&self) -> &dyn TensorSource {
        match self {
            StageFile::Safetensors(f) => f,
            StageFile::Pt(f) => f,
        }
    }
}

/// A rank's files across stages.
pub struct RankSource {
    files: Vec<StageFile>,
    index: IndexMap<String, usize>,
    copies: Vec<(String, usize, usize)>,
}

impl RankSource {
    /// The rank made of `files` (one per stage, in stage order).
    pub fn new(files: Vec<StageFile>) -> Self {
        let mut index = IndexMap::new();
        let mut copies = Vec::new();
        for (s, f) in files.iter().enumerate() {
            for n in f.source().names() {
                match index.get(&n) {
                    Some(first) => copies.push((n, *first, s)),
                    None => {
                        index.insert(n, s);
                    }
                }
            }
        }
        Self { files, index, copies }
    }

    /// The first stage's file path.
    pub fn path(&self) -> &Path {
        self.files.first().map_or(Path::new(""), StageFile::path)
    }

    /// The files, in stage order.
    pub fn files(&self) -> &[StageFile] {
        &self.files
    }

    /// Tensor names, in stage then file order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Dtype and shape of `name`.
    pub fn info(&self, name: &str) -> Option<TensorInfo> {
        let s = *self.index.get(name)?;
        self.files.get(s)?.source().info(name)
    }

    /// A view of `name` (from the first stage holding it).
    pub fn tensor(&self, name: &str) -> Result<HostTensor> {
        match self.index.get(name).and_then(|s| self.files.get(*s)) {
            Some(f) => f.source().tensor(name),
            None => {
                let c: Vec<&str> = self.names().collect();
                Err(Error::key_mismatch(self.path().display().to_string(), vec![name.to_string()], vec![], &c))
            }
        }
    }

    /// Fails, naming the tensor and both files, when a tensor held by several stages differs between them.
    pub fn check_stage_copies(&self) -> Result<()> {
        for (name, a, b) in &self.copies {
            let (Some(fa), Some(fb)) = (self.files.get(*a), self.files.get(*b)) else { continue };
            let (x, y) = (fa.source().tensor(name)?, fb.source().tensor(name)?);
            if x != y {
                return Err(Error::Stage(format!(
                    "tensor {name}: the copy in pipeline stage {b} ({}) differs from stage {a}'s ({}); tied weights must agree across stages",
                    fb.path().display(),
                    fa.path().display()
                )));
            }
        }
        Ok(())
    }
}

impl TensorSource for RankSource {
    fn info(&self, name: &str) -> Option<TensorInfo> {
        RankSource::info(self, name)
    }
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        RankSource::tensor(self, name)
    }
    fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
    fn release(&self, name: &str) {
        if let Some(f) = self.index.get(name).and_then(|s| self.files.get(*s)) {
            f.source().release(name);
        }
    }
}
