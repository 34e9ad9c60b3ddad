//! tessera's intermediate representation and everything that must agree on it: element types,
//! symbolic shapes, the tensor [`Graph`], the optimized [`kernel::KernelGraph`], the artifact
//! container, and the reference interpreter that defines what every op means. Depends on no other
//! tessera crate.

mod dim;
mod dtype;
mod error;
mod graph;
mod infer;
pub mod kernel_text;
mod op;
mod text;

pub mod artifact;
pub mod interp;
pub mod kernel;
pub mod lir;
pub mod memory_plan;
pub mod npy;
pub mod quant;

pub use dim::{eval_shape, shape_string, Dim, DimEnv, Shape};
pub use dtype::{DType, QuantBlock, QK};
pub use error::IrError;
pub use graph::{
    EntryPoint, Graph, ModelInfo, Module, Node, NodeId, StateSpec, TensorType, WeightSpec,
};
pub use infer::{broadcast, infer};
pub use op::{BinaryOp, Op, ReduceOp, RopeLayout, UnaryOp};
