//! Opening a `.tsr` file: map it, verify it once, keep the manifest and hand out weight bytes
//! straight from the mapping.

use crate::RuntimeError;
use memmap2::Mmap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use tessera_ir::artifact::{self, Manifest, WeightSlot};

/// A loaded, verified artifact.
pub struct Artifact {
    path: PathBuf,
    map: Mmap,
    manifest: Manifest,
    tokenizer: Option<String>,
    weights: Range<usize>,
}

impl Artifact {
    pub fn open(path: &Path) -> Result<Artifact, RuntimeError> {
        let io = |source| RuntimeError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the mapping is read-only; tessera never writes to an artifact it has open, and
        // every section is checksummed before use.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let view = artifact::parse(&map, &path.display().to_string())?;
        let start = view.weights.as_ptr() as usize - map.as_ptr() as usize;
        let weights = start..start + view.weights.len();
        let tokenizer = view.tokenizer.map(str::to_string);
        let manifest = view.manifest;
        Ok(Artifact {
            path: path.to_path_buf(),
            map,
            manifest,
            tokenizer,
            weights,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn tokenizer_json(&self) -> Option<&str> {
        self.tokenizer.as_deref()
    }

    /// Size of the whole file in bytes.
    pub fn file_bytes(&self) -> usize {
        self.map.len()
    }

    pub fn weight_bytes(&self, slot: &WeightSlot) -> &[u8] {
        let section = &self.map[self.weights.clone()];
        &section[slot.offset as usize..(slot.offset + slot.len) as usize]
    }
}
