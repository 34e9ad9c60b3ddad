//! The runtime's error type: every message names the file, input or option at fault.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ir(#[from] tessera_ir::IrError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request the loaded model cannot serve (too long, empty prompt, bad sampling option, …).
    #[error("{0}")]
    Request(String),
    /// The artifact is for a target this runtime cannot execute.
    #[error("{0}")]
    Unsupported(String),
    /// A compiled kernel failed to build or launch; the message names the entry point and kernel.
    #[error("{0}")]
    Kernel(String),
}
