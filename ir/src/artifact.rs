//! The `.tsr` artifact container (DESIGN.md §6): one file holding the manifest, the tokenizer and
//! the weights, each section checksummed, weights page-aligned so the runtime can mmap them.
//!
//! Layout (little-endian):
//! ```text
//! 0    magic "TESSERA\0"                     8 bytes
//! 8    format version                        u32
//! 12   section count                         u32
//! 16   section table: kind u32, reserved u32, offset u64, length u64, crc32 u32, reserved u32
//! ..   crc32 of bytes 8..end of table        u32
//! ..   sections, each starting at a multiple of 64 (weights: of 4096)
//! ```

use crate::{IrError, Module};
use serde::{Deserialize, Serialize};
use std::io::{Seek, SeekFrom, Write};

pub const MAGIC: [u8; 8] = *b"TESSERA\0";
/// Bumped on any incompatible change of the container or the manifest.
pub const FORMAT_VERSION: u32 = 2;
/// Weights start on a page boundary so a mapped file hands out aligned tensors.
pub const WEIGHTS_ALIGN: u64 = 4096;
/// Every tensor inside the weights section starts at a multiple of this.
pub const TENSOR_ALIGN: u64 = 64;

const ENTRY_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    Manifest = 1,
    Tokenizer = 2,
    Weights = 3,
}

impl SectionKind {
    fn from_u32(v: u32) -> Option<SectionKind> {
        match v {
            1 => Some(SectionKind::Manifest),
            2 => Some(SectionKind::Tokenizer),
            3 => Some(SectionKind::Weights),
            _ => None,
        }
    }
}

/// Where one weight lives inside the weights section.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightSlot {
    pub name: String,
    pub offset: u64,
    pub len: u64,
}

/// Everything about the artifact except the bulk bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The tessera version that wrote the file.
    pub producer: String,
    /// What the code in this artifact runs on (`reference` executes the Graph in the interpreter).
    pub target: String,
    /// Where the model came from (a path or `demo`).
    pub source: String,
    /// The normalized model configuration as the importer understood it.
    pub config: serde_json::Value,
    pub module: Module,
    /// One slot per `module.weights` entry, in the same order.
    pub weight_slots: Vec<WeightSlot>,
}

fn align(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Weight slots for tensors of the given byte lengths, each aligned to [`TENSOR_ALIGN`].
pub fn layout_weights<'a>(weights: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<WeightSlot> {
    let mut offset = 0;
    weights
        .into_iter()
        .map(|(name, len)| {
            let slot = WeightSlot {
                name: name.to_string(),
                offset,
                len,
            };
            offset = align(offset + len, TENSOR_ALIGN);
            slot
        })
        .collect()
}

struct Entry {
    kind: SectionKind,
    offset: u64,
    len: u64,
    crc: u32,
}

fn header_len(sections: usize) -> u64 {
    (16 + sections * ENTRY_BYTES + 4) as u64
}

fn encode_header(entries: &[Entry]) -> Vec<u8> {
    let mut h = Vec::with_capacity(header_len(entries.len()) as usize);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        h.extend_from_slice(&(e.kind as u32).to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h.extend_from_slice(&e.offset.to_le_bytes());
        h.extend_from_slice(&e.len.to_le_bytes());
        h.extend_from_slice(&e.crc.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
    }
    let crc = crc32fast::hash(&h[8..]);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Writes an artifact. `weights` yields each weight's bytes in `manifest.weight_slots` order;
/// `progress` is called with the number of weight bytes written so far.
pub fn write<W: Write + Seek>(
    out: &mut W,
    manifest: &Manifest,
    tokenizer: Option<&str>,
    weights: &mut dyn Iterator<Item = &[u8]>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), IrError> {
    let io = |e: std::io::Error| IrError::Format(format!("writing artifact: {e}"));
    let manifest_json = serde_json::to_vec(manifest)
        .map_err(|e| IrError::Format(format!("encoding manifest: {e}")))?;
    let mut small: Vec<(SectionKind, &[u8])> = vec![(SectionKind::Manifest, &manifest_json)];
    if let Some(t) = tokenizer {
        small.push((SectionKind::Tokenizer, t.as_bytes()));
    }
    let count = small.len() + 1;
    out.write_all(&vec![0u8; header_len(count) as usize])
        .map_err(io)?;
    let mut pos = header_len(count);
    let mut entries = Vec::with_capacity(count);
    for (kind, bytes) in small {
        let offset = align(pos, TENSOR_ALIGN);
        out.write_all(&vec![0u8; (offset - pos) as usize])
            .map_err(io)?;
        out.write_all(bytes).map_err(io)?;
        entries.push(Entry {
            kind,
            offset,
            len: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
        });
        pos = offset + bytes.len() as u64;
    }
    let weights_start = align(pos, WEIGHTS_ALIGN);
    out.write_all(&vec![0u8; (weights_start - pos) as usize])
        .map_err(io)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut written = 0u64;
    for slot in &manifest.weight_slots {
        let bytes = weights
            .next()
            .ok_or_else(|| IrError::Format(format!("no bytes given for weight `{}`", slot.name)))?;
        if bytes.len() as u64 != slot.len {
            let msg = format!(
                "weight `{}` has {} bytes, its slot {}",
                slot.name,
                bytes.len(),
                slot.len
            );
            return Err(IrError::Format(msg));
        }
        let pad = vec![0u8; (slot.offset - written) as usize];
        for chunk in [&pad[..], bytes] {
            hasher.update(chunk);
            out.write_all(chunk).map_err(io)?;
        }
        written = slot.offset + slot.len;
        progress(written);
    }
    entries.push(Entry {
        kind: SectionKind::Weights,
        offset: weights_start,
        len: written,
        crc: hasher.finalize(),
    });
    out.seek(SeekFrom::Start(0)).map_err(io)?;
    out.write_all(&encode_header(&entries)).map_err(io)?;
    out.flush().map_err(io)
}

/// A parsed artifact borrowing its bytes (typically a mapped file).
#[derive(Debug)]
pub struct ArtifactView<'a> {
    pub manifest: Manifest,
    pub tokenizer: Option<&'a str>,
    /// The weights section; slots index into it.
    pub weights: &'a [u8],
}

impl ArtifactView<'_> {
    /// The bytes of one weight, by its slot.
    pub fn weight_bytes(&self, slot: &WeightSlot) -> &[u8] {
        &self.weights[slot.offset as usize..(slot.offset + slot.len) as usize]
    }
}

/// Parses and verifies an artifact: magic, version, every section's bounds and checksum, and the
/// manifest's consistency. `what` (the file name) prefixes every error.
pub fn parse<'a>(bytes: &'a [u8], what: &str) -> Result<ArtifactView<'a>, IrError> {
    let bad = |msg: String| IrError::Format(format!("{what}: {msg}"));
    if bytes.len() < 16 || bytes[..8] != MAGIC {
        return Err(bad("not a tessera artifact (bad magic)".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "artifact format version {version}, this tessera reads version {FORMAT_VERSION}: recompile the model"
        )));
    }
    let count = u32_at(12) as usize;
    let hlen = header_len(count.min(64)) as usize;
    if count > 64 || bytes.len() < hlen {
        return Err(bad(format!(
            "truncated header ({} bytes, {count} sections)",
            bytes.len()
        )));
    }
    if crc32fast::hash(&bytes[8..hlen - 4]) != u32_at(hlen - 4) {
        return Err(bad("header checksum mismatch: the file is corrupt".into()));
    }
    let mut manifest = None;
    let mut tokenizer = None;
    let mut weights = None;
    for i in 0..count {
        let at = 16 + i * ENTRY_BYTES;
        let kind = SectionKind::from_u32(u32_at(at))
            .ok_or_else(|| bad(format!("unknown section kind {}", u32_at(at))))?;
        let (offset, len, crc) = (u64_at(at + 8), u64_at(at + 16), u32_at(at + 24));
        let end = offset.checked_add(len).filter(|&e| e <= bytes.len() as u64);
        let end = end.ok_or_else(|| {
            bad(format!(
                "truncated: {kind:?} section ends at byte {}, file has {}",
                offset.saturating_add(len),
                bytes.len()
            ))
        })?;
        let body = &bytes[offset as usize..end as usize];
        if crc32fast::hash(body) != crc {
            return Err(bad(format!(
                "{kind:?} section checksum mismatch: the file is corrupt"
            )));
        }
        match kind {
            SectionKind::Manifest => manifest = Some(body),
            SectionKind::Tokenizer => {
                tokenizer = Some(
                    std::str::from_utf8(body)
                        .map_err(|_| bad("tokenizer section is not UTF-8".into()))?,
                )
            }
            SectionKind::Weights => weights = Some(body),
        }
    }
    let manifest = manifest.ok_or_else(|| bad("no manifest section".into()))?;
    let manifest: Manifest =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest: {e}")))?;
    let weights = weights.ok_or_else(|| bad("no weights section".into()))?;
    check_slots(&manifest, weights.len() as u64).map_err(bad)?;
    Ok(ArtifactView {
        manifest,
        tokenizer,
        weights,
    })
}

fn check_slots(manifest: &Manifest, section_len: u64) -> Result<(), String> {
    let specs = &manifest.module.weights;
    if specs.len() != manifest.weight_slots.len() {
        return Err(format!(
            "{} weights declared but {} slots",
            specs.len(),
            manifest.weight_slots.len()
        ));
    }
    for (spec, slot) in specs.iter().zip(&manifest.weight_slots) {
        let want = spec
            .dtype
            .storage_bytes(&spec.shape)
            .map_err(|e| format!("weight `{}`: {e}", spec.name))?;
        if spec.name != slot.name || slot.len != want as u64 || slot.offset + slot.len > section_len
        {
            return Err(format!(
                "weight slot `{}` does not match its declaration",
                slot.name
            ));
        }
    }
    manifest.module.validate().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, EntryPoint, Graph, ModelInfo, Op, UnaryOp, WeightSpec};
    use std::io::Cursor;

    fn sample() -> (Manifest, Vec<Vec<u8>>) {
        let mut g = Graph::new();
        let w = g.weight("w", DType::F32, &[3]);
        let y = g.add(Op::Unary(UnaryOp::Exp), &[w]).unwrap();
        g.output("y", y);
        let module = Module {
            info: ModelInfo {
                architecture: "test".into(),
                vocab_size: 3,
                max_context: 8,
                bos_token_id: None,
                eos_token_ids: vec![],
                num_layers: 0,
                hidden_size: 3,
            },
            weights: vec![
                WeightSpec {
                    name: "w".into(),
                    dtype: DType::F32,
                    shape: vec![3],
                },
                WeightSpec {
                    name: "b".into(),
                    dtype: DType::U8,
                    shape: vec![5],
                },
            ],
            state: vec![],
            entries: vec![EntryPoint {
                name: "main".into(),
                graph: g,
                kernels: None,
                cpu_code: vec![],
                gpu_code: vec![],
            }],
        };
        let data = vec![
            [1.0f32, 2.0, 3.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            vec![9u8; 5],
        ];
        let weight_slots = layout_weights(
            module
                .weights
                .iter()
                .zip(&data)
                .map(|(w, d)| (w.name.as_str(), d.len() as u64)),
        );
        let manifest = Manifest {
            producer: "test".into(),
            target: "reference".into(),
            source: "unit".into(),
            config: serde_json::json!({"hidden": 3}),
            module,
            weight_slots,
        };
        (manifest, data)
    }

    fn encode(tokenizer: Option<&str>) -> (Manifest, Vec<u8>) {
        let (manifest, data) = sample();
        let mut cur = Cursor::new(Vec::new());
        let mut it = data.iter().map(Vec::as_slice);
        write(&mut cur, &manifest, tokenizer, &mut it, &mut |_| {}).unwrap();
        (manifest, cur.into_inner())
    }

    #[test]
    fn round_trip_and_alignment() {
        let (manifest, bytes) = encode(Some("{\"tok\": 1}"));
        let view = parse(&bytes, "m.tsr").unwrap();
        assert_eq!(view.manifest, manifest);
        assert_eq!(view.tokenizer, Some("{\"tok\": 1}"));
        let offset = view.weights.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(offset as u64 % WEIGHTS_ALIGN, 0);
        assert_eq!(view.manifest.weight_slots[1].offset % TENSOR_ALIGN, 0);
        assert_eq!(view.weight_bytes(&view.manifest.weight_slots[1]), &[9u8; 5]);
    }

    #[test]
    fn truncated_corrupt_and_wrong_version_are_errors() {
        let (_, bytes) = encode(None);
        let err = parse(&bytes[..bytes.len() - 2], "m.tsr")
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.tsr") && err.contains("truncated"), "{err}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let err = parse(&flipped, "m.tsr").unwrap_err().to_string();
        assert!(err.contains("Weights section checksum"), "{err}");
        let mut old = bytes.clone();
        old[8] = 7;
        let err = parse(&old, "m.tsr").unwrap_err().to_string();
        assert!(err.contains("version 7"), "{err}");
        assert!(parse(b"GGUF....", "m.tsr")
            .unwrap_err()
            .to_string()
            .contains("bad magic"));
        assert!(parse(&bytes[..20], "m.tsr").is_err());
    }
}
