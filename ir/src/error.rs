//! The one error type of `ir`.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum IrError {
    /// An op whose inputs do not fit it; `node` is `%N opname`, `scope` where in the model.
    #[error("type error at {node}{}: {message}", if scope.is_empty() { String::new() } else { format!(" in {scope}") })]
    Type {
        node: String,
        scope: String,
        message: String,
    },
    /// Run-time inputs that do not match the declared shapes.
    #[error("input binding: {0}")]
    Binding(String),
    /// A structurally broken graph or module.
    #[error("invalid module: {0}")]
    Invalid(String),
    /// The reference interpreter could not evaluate a node.
    #[error("interpreter: {0}")]
    Eval(String),
    /// A malformed or unreadable artifact, `.npy` file or other container.
    #[error("{0}")]
    Format(String),
}
