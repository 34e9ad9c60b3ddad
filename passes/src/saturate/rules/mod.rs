//! The rule registry: every rewrite rule, by phase. Phases run in order on one e-graph, each with
//! its own budgets (see `runner`): algebra and canonical forms, recognition of composite ops,
//! horizontal merging of projections that share an input, fusion into kernel bodies, and
//! selection of templates with their tile alternatives.

mod algebra;
mod class_rule;
mod fusion;
mod merge;
mod recognition;
mod selection;

use super::analysis::Types;
use super::lang::TNode;
use crate::cost::TargetSpec;
use egg::Rewrite;
use tessera_ir::DimEnv;

/// A rule's phase, in run order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Algebra,
    Recognition,
    Merge,
    Fusion,
    Selection,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Algebra,
        Phase::Recognition,
        Phase::Merge,
        Phase::Fusion,
        Phase::Selection,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Algebra => "algebra",
            Phase::Recognition => "recognition",
            Phase::Merge => "merge",
            Phase::Fusion => "fusion",
            Phase::Selection => "selection",
        }
    }
}

/// What target-dependent rules (selection and tiling) need to know.
pub struct RuleContext<'a> {
    pub target: &'a TargetSpec,
    /// The shape bucket being optimized (e.g. `seq = 1, past = 1024` for decode).
    pub env: &'a DimEnv,
}

pub type Rule = Rewrite<TNode, Types>;

/// The rules of one phase.
pub fn rules(phase: Phase, ctx: &RuleContext) -> Vec<Rule> {
    match phase {
        Phase::Algebra => algebra::rules(),
        Phase::Recognition => recognition::rules(),
        Phase::Merge => merge::rules(),
        Phase::Fusion => fusion::rules(),
        Phase::Selection => selection::rules(ctx),
    }
}

/// Every rule's name with its phase (for `explain` and the soundness-test registry check).
pub fn registry(ctx: &RuleContext) -> Vec<(String, Phase)> {
    Phase::ALL
        .iter()
        .flat_map(|&p| {
            rules(p, ctx)
                .into_iter()
                .map(move |r| (r.name.to_string(), p))
        })
        .collect()
}
