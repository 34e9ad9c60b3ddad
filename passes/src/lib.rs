//! tessera's optimizer: equality saturation (egg) from the tensor Graph to a KernelGraph —
//! fusion, attention and matmul selection, tiling by a roofline cost model — plus layer rolling
//! and the memory plan. Never sees a target's syntax: it chooses templates, `lower` writes them
//! as LIR.

pub mod cost;
pub mod lower;
pub mod optimize;
pub mod plan;
pub mod quantize;
pub mod rolling;
pub mod saturate;
pub mod storage;
#[cfg(test)]
mod test_module;
