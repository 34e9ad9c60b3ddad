//! Equality saturation from Graph to KernelGraph (DESIGN.md §4): the e-graph language and its
//! type analysis, rule sets run in phases with budgets, and extraction by the cost model.

pub mod analysis;
pub mod convert;
pub(crate) mod custom;
pub mod extract;
pub mod lang;
pub mod ops;
pub mod rules;
pub mod runner;
pub mod to_kernels;

#[cfg(test)]
mod soundness;
