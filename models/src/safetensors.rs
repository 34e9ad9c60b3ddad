//! Weight loading: finds the safetensors file(s) of a folder, maps them, and indexes their
//! tensors without copying any data.
//!
//! The header is parsed here rather than with the `safetensors` crate so that every defect of a
//! truncated or corrupt file becomes an error naming the file and the tensor, with checked
//! arithmetic throughout (a crafted header must not be able to panic the importer).

use crate::{ModelError, WeightData};
use memmap2::Mmap;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_ir::DType;

/// The single-file weights name.
pub(crate) const SINGLE_FILE: &str = "model.safetensors";
/// The index of a sharded set (`weight_map`: tensor name → shard file).
pub(crate) const INDEX_FILE: &str = "model.safetensors.index.json";

/// Headers larger than this are rejected before being read (the format's own limit).
const MAX_HEADER_BYTES: usize = 100_000_000;

/// One tensor of one mapped file.
#[derive(Clone, Debug)]
pub(crate) struct TensorInfo {
    /// Index into [`TensorIndex::files`].
    file: usize,
    /// The safetensors dtype name (`F32`, `BF16`, `I64`, …).
    pub(crate) dtype: String,
    pub(crate) shape: Vec<usize>,
    /// Byte range in the file (header included), so it can index the map directly.
    start: usize,
    end: usize,
}

impl TensorInfo {
    /// The dtype when the graph can read it (F32, F16, BF16).
    pub(crate) fn ir_dtype(&self) -> Option<DType> {
        match self.dtype.as_str() {
            "F32" => Some(DType::F32),
            "F16" => Some(DType::F16),
            "BF16" => Some(DType::Bf16),
            _ => None,
        }
    }
}

struct MappedFile {
    path: PathBuf,
    map: Arc<Mmap>,
}

/// Every tensor of a folder's weight files, by name.
pub(crate) struct TensorIndex {
    files: Vec<MappedFile>,
    tensors: BTreeMap<String, TensorInfo>,
}

impl TensorIndex {
    /// Maps `model.safetensors`, or else every shard named by `model.safetensors.index.json`
    /// (the order `transformers` tries them in).
    pub(crate) fn open(dir: &Path) -> Result<TensorIndex, ModelError> {
        let single = dir.join(SINGLE_FILE);
        let paths = if single.is_file() {
            vec![single]
        } else {
            let index = dir.join(INDEX_FILE);
            let text = match std::fs::read_to_string(&index) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ModelError::MissingFile {
                        dir: dir.to_path_buf(),
                        what: format!("weights ({SINGLE_FILE} or {INDEX_FILE})"),
                    })
                }
                Err(e) => return Err(ModelError::io(&index, e)),
            };
            shard_paths(dir, &index, &text)?
        };
        let mut index = TensorIndex {
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for path in paths {
            index.add_file(path)?;
        }
        Ok(index)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<(), ModelError> {
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        // SAFETY: the map is read-only and the weights are treated as immutable for the life of
        // the import; like every mmap-based loader we rely on the file not being truncated or
        // rewritten underneath us while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let file_index = self.files.len();
        for (name, mut info) in parse_header(&map, &path)? {
            info.file = file_index;
            if let Some(prev) = self.tensors.get(&name) {
                return Err(ModelError::Safetensors {
                    file: path,
                    message: format!(
                        "tensor `{name}` is also stored in {}",
                        self.files[prev.file].path.display()
                    ),
                });
            }
            self.tensors.insert(name, info);
        }
        self.files.push(MappedFile {
            path,
            map: Arc::new(map),
        });
        Ok(())
    }

    /// The stored tensor for a canonical weight name. Checkpoints saved from the bare base model
    /// lack the `model.` / `transformer.` prefix, so the unprefixed name is tried second.
    pub(crate) fn find(&self, name: &str) -> Option<(&str, &TensorInfo)> {
        let unprefixed = name
            .strip_prefix("transformer.")
            .or_else(|| name.strip_prefix("model."));
        std::iter::once(name)
            .chain(unprefixed)
            .find_map(|n| self.tensors.get_key_value(n))
            .map(|(n, t)| (n.as_str(), t))
    }

    /// All stored tensor names.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The files searched, for error messages.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.files.iter().map(|f| f.path.clone()).collect()
    }

    pub(crate) fn path_of(&self, info: &TensorInfo) -> &Path {
        &self.files[info.file].path
    }

    /// The tensor's bytes, still mapped.
    pub(crate) fn data(&self, info: &TensorInfo) -> WeightData {
        WeightData::Mapped {
            map: Arc::clone(&self.files[info.file].map),
            start: info.start,
            end: info.end,
        }
    }
}

/// The distinct shard files of an index, in order of first mention.
fn shard_paths(dir: &Path, index: &Path, text: &str) -> Result<Vec<PathBuf>, ModelError> {
    let file = index.display().to_string();
    let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let bad = |message: &str| ModelError::Config {
        file: file.clone(),
        key: "weight_map".into(),
        message: message.into(),
    };
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("missing, or not an object of tensor name → file"))?;
    let mut paths: Vec<PathBuf> = Vec::new();
    for shard in map.values() {
        let name = shard
            .as_str()
            .ok_or_else(|| bad(&format!("shard file names must be strings, got {shard}")))?;
        let path = dir.join(name);
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(bad("names no shard files"));
    }
    Ok(paths)
}

#[derive(Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// Bytes per element of the safetensors dtypes with whole-byte elements; `None` for the
/// sub-byte float formats, whose sizes are not checked.
fn elem_bytes(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "BOOL" | "I8" | "U8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// Parses and checks a safetensors header: 8 bytes of little-endian header length, a JSON object
/// of tensor name → {dtype, shape, data_offsets}, then the data; offsets are relative to the data.
fn parse_header(bytes: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>, ModelError> {
    let corrupt = |message: String| ModelError::Safetensors {
        file: path.to_path_buf(),
        message,
    };
    let Some(len_bytes) = bytes.get(..8) else {
        return Err(corrupt(format!(
            "the file is {} bytes, too short for the 8-byte header length",
            bytes.len()
        )));
    };
    let header_len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
    let available = bytes.len() - 8;
    let header_len = usize::try_from(header_len)
        .ok()
        .filter(|&n| n <= available && n <= MAX_HEADER_BYTES)
        .ok_or_else(|| {
            corrupt(format!(
                "the header claims {header_len} bytes but the file has {available} after the length \
                 (truncated?)"
            ))
        })?;
    let data_start = 8 + header_len;
    let data_len = bytes.len() - data_start;
    let entries: BTreeMap<String, Value> = serde_json::from_slice(&bytes[8..data_start])
        .map_err(|e| corrupt(format!("the header is not a JSON object: {e}")))?;
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if name == "__metadata__" {
            continue;
        }
        let entry: HeaderEntry = serde_json::from_value(value)
            .map_err(|e| corrupt(format!("tensor `{name}`: malformed header entry: {e}")))?;
        let [begin, end] = entry.data_offsets;
        if begin > end || end > data_len {
            return Err(corrupt(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] lie outside the {data_len}-byte data \
                 section (truncated?)"
            )));
        }
        if let Some(elem) = elem_bytes(&entry.dtype) {
            let want = entry
                .shape
                .iter()
                .try_fold(elem, |acc, &d| acc.checked_mul(d));
            if want != Some(end - begin) {
                return Err(corrupt(format!(
                    "tensor `{name}`: {} {:?} needs {} bytes but data_offsets span {}",
                    entry.dtype,
                    entry.shape,
                    want.map_or("too many".into(), |w| w.to_string()),
                    end - begin
                )));
            }
        }
        out.push((
            name,
            TensorInfo {
                file: 0,
                dtype: entry.dtype,
                shape: entry.shape,
                start: data_start + begin,
                end: data_start + end,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A safetensors file of the given tensors (name, dtype, shape), filled with a byte pattern;
    /// test helper shared with the importer's tests.
    pub(crate) fn safetensors_bytes(tensors: &[(&str, &str, &[usize])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape) in tensors {
            let len = shape.iter().product::<usize>() * elem_bytes(dtype).unwrap();
            let start = data.len();
            data.extend((0..len).map(|i| (i % 251) as u8));
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        bytes.extend(data);
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<Vec<(String, TensorInfo)>, String> {
        parse_header(bytes, Path::new("x.safetensors")).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_the_reference_crate_writes() {
        let a: Vec<u8> = (0..24u8).collect();
        let b: Vec<u8> = (100..104u8).collect();
        let views = HashMap::from([
            (
                "a".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3], &a)
                    .unwrap(),
            ),
            (
                "b".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, vec![2], &b)
                    .unwrap(),
            ),
        ]);
        let meta = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        let bytes = safetensors::serialize(views, meta).unwrap();
        let parsed: HashMap<String, TensorInfo> = parse(&bytes).unwrap().into_iter().collect();
        assert_eq!(parsed.len(), 2);
        let ta = &parsed["a"];
        assert_eq!(
            (ta.dtype.as_str(), ta.shape.as_slice()),
            ("F32", &[2, 3][..])
        );
        assert_eq!(&bytes[ta.start..ta.end], &a[..]);
        assert_eq!(parsed["b"].ir_dtype(), Some(DType::Bf16));
        assert_eq!(&bytes[parsed["b"].start..parsed["b"].end], &b[..]);
    }

    #[test]
    fn corrupt_headers_are_errors_not_panics() {
        let good = safetensors_bytes(&[("w", "F32", &[4, 4])]);
        assert!(parse(&good).is_ok());

        let err = parse(&good[..good.len() - 1]).unwrap_err();
        assert!(err.contains("`w`") && err.contains("truncated"), "{err}");
        assert!(parse(&good[..5]).unwrap_err().contains("too short"));
        assert!(parse(&good[..20]).unwrap_err().contains("truncated"));
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&huge).unwrap_err().contains("header claims"));
        let mut garbage = good.clone();
        garbage[8] = b'[';
        assert!(parse(&garbage).unwrap_err().contains("not a JSON object"));

        let craft = |header: &str, data: usize| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend(header.as_bytes());
            b.extend(std::iter::repeat_n(0u8, data));
            b
        };
        let overflow = format!(
            r#"{{"w":{{"dtype":"F32","shape":[{m},{m}],"data_offsets":[0,8]}}}}"#,
            m = usize::MAX
        );
        assert!(parse(&craft(&overflow, 8))
            .unwrap_err()
            .contains("too many"));
        let far = format!(
            r#"{{"w":{{"dtype":"U8","shape":[1],"data_offsets":[{m},{m}]}}}}"#,
            m = usize::MAX
        );
        assert!(parse(&craft(&far, 8)).unwrap_err().contains("outside"));
        let wrong_size = r#"{"w":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#;
        assert!(parse(&craft(wrong_size, 4))
            .unwrap_err()
            .contains("needs 6 bytes"));
        let missing_field = r#"{"w":{"dtype":"F16","shape":[3]}}"#;
        assert!(parse(&craft(missing_field, 6))
            .unwrap_err()
            .contains("malformed header entry"));
    }
}
