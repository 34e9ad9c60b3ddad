//! The soundness checker every rewrite rule goes through (DESIGN.md §4): a small random Graph
//! that exercises the rule becomes an e-graph, the rule alone runs on it and must fire, the
//! e-graph must stay well typed, and several terms read back out of the output's class — the
//! shallowest, one built from the rule's new nodes, and random ones — must each evaluate, in
//! the reference interpreter on random inputs, allclose to the original graph.
//!
//! `cases` generates the graphs, `sample` reads terms back out, `proven` holds one proptest per
//! rule plus the registry check that no rule goes without one, and `phases` checks all phases
//! together as the runner runs them.

mod cases;
mod phases;
mod proven;
mod sample;

use super::analysis::{check_types, TEGraph};
use super::convert::graph_to_egraph;
use super::lang::TNode;
use super::rules::{rules, Phase, Rule, RuleContext};
use crate::cost::TargetSpec;
use egg::{Id, Language, Runner};
use proptest::prelude::*;
use sample::{Pick, Terms};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tessera_ir::interp::{run, Tensor, TensorData};
use tessera_ir::{eval_shape, DimEnv, Graph, Op};

/// A graph with one output `out`, the sizes of its symbolic dims, and the seed of its values.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub graph: Graph,
    pub env: DimEnv,
    pub seed: u64,
}

/// Random terms read out per case, besides the shallowest and the fresh one.
const RANDOM_TERMS: u64 = 4;

/// Calls `f` with the context rules are built in here: the host CPU and an empty bucket.
fn with_context<T>(f: impl FnOnce(&RuleContext) -> T) -> T {
    let target = TargetSpec::cpu_host();
    let env = DimEnv::new();
    f(&RuleContext {
        target: &target,
        env: &env,
    })
}

/// Rules that only fire on what other rules build: fusion merges the bodies `lift-to-fused`
/// makes, selection turns fused bodies into kernels.
fn prerequisites(name: &str) -> &'static [&'static str] {
    match name {
        "fuse-producer" => &["lift-to-fused"],
        "select-template" => &["lift-to-fused", "fuse-producer"],
        _ => &[],
    }
}

/// Checks rule `name` on `case` (see the module documentation), after its prerequisites.
pub(super) fn check_rule(name: &str, case: &Case) -> Result<(), TestCaseError> {
    let wanted: Vec<&str> = prerequisites(name).iter().copied().chain([name]).collect();
    let rules: Vec<Rule> = with_context(|ctx| {
        Phase::ALL
            .iter()
            .flat_map(|&p| rules(p, ctx))
            .filter(|r| wanted.contains(&r.name.as_str()))
            .collect()
    });
    assert_eq!(
        rules.len(),
        wanted.len(),
        "rules {wanted:?} are not all in the registry"
    );
    check_terms(case, &format!("rule {name}"), |egraph, root| {
        let runner = Runner::default()
            .with_egraph(egraph)
            .with_iter_limit(4)
            .with_node_limit(20_000)
            .with_time_limit(Duration::from_secs(10))
            .run(&rules);
        let fired: usize = runner
            .iterations
            .iter()
            .filter_map(|i| i.applied.get(&egg::Symbol::from(name)))
            .sum();
        if fired == 0 {
            return Err(format!("rule {name} did not fire"));
        }
        Ok((runner.egraph, root))
    })
}

/// Checks that after `rewrite` (the e-graph of `case` and its output class ↦ the rewritten
/// e-graph and output class) the types are sound and the terms of the output class compute what
/// the case's graph does; `what` names the rewrite in failures.
pub(super) fn check_terms(
    case: &Case,
    what: &str,
    rewrite: impl FnOnce(TEGraph, Id) -> Result<(TEGraph, Id), String>,
) -> Result<(), TestCaseError> {
    let graph = &case.graph;
    let fail = |msg: String| TestCaseError::fail(format!("{what}: {msg}\noriginal:\n{graph}"));
    let mut egraph = TEGraph::default();
    let ids = graph_to_egraph(graph, &mut egraph);
    let root = ids[&graph
        .output_node("out")
        .expect("cases have an output `out`")];
    let before: Vec<TNode> = egraph
        .classes()
        .flat_map(|c| c.nodes.iter().cloned())
        .collect();
    let (egraph, root) = rewrite(egraph, root).map_err(fail)?;
    check_types(&egraph).map_err(|e| fail(format!("ill-typed e-graph: {e}")))?;
    let old: HashSet<TNode> = before
        .into_iter()
        .map(|n| n.map_children(|c| egraph.find(c)))
        .collect();
    let fresh: HashSet<TNode> = egraph
        .classes()
        .flat_map(|c| c.nodes.iter())
        .filter(|n| !old.contains(*n))
        .cloned()
        .collect();

    let (inputs, weights) = values(case);
    let expected = evaluate(graph, &inputs, &weights).map_err(fail)?;
    let picks = [Pick::Shallowest, Pick::Fresh(case.seed)]
        .into_iter()
        .chain((1..=RANDOM_TERMS).map(|i| Pick::Random(case.seed.wrapping_add(i))));
    let terms = Terms::new(&egraph, &fresh);
    for pick in picks {
        let term = terms.term_to_graph(root, pick).map_err(fail)?;
        let got = evaluate(&term, &inputs, &weights)
            .map_err(|e| fail(format!("term {pick:?} fails: {e}\n{term}")))?;
        close(&got, &expected)
            .map_err(|e| fail(format!("term {pick:?} differs: {e}\nterm:\n{term}")))?;
    }
    Ok(())
}

fn evaluate(
    graph: &Graph,
    inputs: &BTreeMap<String, Tensor>,
    weights: &BTreeMap<String, Tensor>,
) -> Result<Tensor, String> {
    let mut out = run(graph, weights, inputs).map_err(|e| e.to_string())?;
    out.remove("out")
        .ok_or_else(|| "no output `out`".to_string())
}

/// Values for the case's inputs and weights: floats are multiples of 1/16 in [-2, 2) (exact in
/// f16 and bf16 too), integers small, quantized weights quantized from such floats.
fn values(case: &Case) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let mut state = case.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 33) as i64 % 64 - 32
    };
    let (mut inputs, mut weights) = (BTreeMap::new(), BTreeMap::new());
    for node in &case.graph.nodes {
        let (name, into) = match &node.op {
            Op::Input { name } => (name, &mut inputs),
            Op::Weight { name } => (name, &mut weights),
            _ => continue,
        };
        let shape = eval_shape(&node.ty.shape, &case.env).expect("case dims are bound");
        let n: usize = shape.iter().product();
        let floats: Vec<f32> = (0..n).map(|_| next() as f32 / 16.0).collect();
        let dtype = node.ty.dtype;
        let data = match dtype {
            d if d.is_quantized() => {
                Tensor::quantize(d, shape.clone(), &floats)
                    .expect("whole blocks")
                    .data
            }
            d if d.is_float() => TensorData::F32(floats),
            d if d.is_int() => TensorData::I32(floats.iter().map(|&f| (f * 4.0) as i32).collect()),
            _ => TensorData::Bool(floats.iter().map(|&f| f > 0.0).collect()),
        };
        into.insert(name.clone(), Tensor { dtype, shape, data });
    }
    (inputs, weights)
}

/// Same dtype and shape, and |a − b| ≤ 1e-4 + 1e-4·|b| elementwise (exact for non-floats).
fn close(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype != want.dtype || got.shape != want.shape {
        return Err(format!(
            "{}{:?} vs {}{:?}",
            got.dtype, got.shape, want.dtype, want.shape
        ));
    }
    match (got.as_f32(), want.as_f32()) {
        (Some(a), Some(b)) => a.iter().zip(b).enumerate().try_for_each(|(i, (x, y))| {
            if (x - y).abs() <= 1e-4 + 1e-4 * y.abs() {
                Ok(())
            } else {
                Err(format!("element {i}: {x} vs {y}"))
            }
        }),
        _ => (got == want)
            .then_some(())
            .ok_or_else(|| "values differ".to_string()),
    }
}
