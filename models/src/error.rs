//! The one error type of the importers. Every message names the file, tensor, key or option at
//! fault, because the user's next step is to open that file.

use std::path::{Path, PathBuf};
use tessera_ir::IrError;
use thiserror::Error;

/// Why a model folder or config could not be turned into a Module.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file that exists could not be read.
    #[error("{}: {err}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        err: std::io::Error,
    },
    /// A required file is absent from the model folder.
    #[error("{}: missing {what}", dir.display())]
    MissingFile { dir: PathBuf, what: String },
    /// A JSON file (config, index) that does not parse.
    #[error("{file}: invalid JSON: {message}")]
    Json { file: String, message: String },
    /// A config key that is missing, mistyped or out of range.
    #[error("{file}: `{key}`: {message}")]
    Config {
        file: String,
        key: String,
        message: String,
    },
    /// A `model_type` no builder handles.
    #[error("{file}: unknown model_type `{model_type}` (supported: {supported})")]
    UnknownModelType {
        file: String,
        model_type: String,
        supported: String,
    },
    /// A valid option that tessera does not implement.
    #[error("{file}: unsupported option `{key}` = {value}: {reason}")]
    Unsupported {
        file: String,
        key: String,
        value: String,
        reason: String,
    },
    /// A safetensors file that is truncated or whose header is malformed.
    #[error("{}: corrupt safetensors file: {message}", file.display())]
    Safetensors { file: PathBuf, message: String },
    /// A weight the architecture needs is in none of the weight files.
    #[error("tensor `{name}` not found (searched {})", list_paths(searched))]
    MissingTensor {
        name: String,
        searched: Vec<PathBuf>,
    },
    /// A stored tensor whose shape differs from what the config implies.
    #[error("tensor `{name}` in {}: expected shape {expected:?}, found {found:?}", file.display())]
    TensorShape {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A stored tensor in a dtype the graph cannot read.
    #[error("tensor `{name}` in {}: dtype {dtype} is not supported (F32, F16 and BF16 are)", file.display())]
    TensorDType {
        name: String,
        file: PathBuf,
        dtype: String,
    },
    /// The builder produced an ill-typed graph (a bug or a config the checks missed).
    #[error("building the graph: {0}")]
    Graph(#[from] IrError),
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

impl ModelError {
    pub(crate) fn io(path: &Path, err: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            err,
        }
    }
}
