//! Runs the rule phases in order on one e-graph, each under its own budget (DESIGN.md §4:
//! multi-pattern rules can blow an e-graph up, so every phase stops at a node, iteration or time
//! limit), checks the types after each phase, and reports what each phase did.

use super::analysis::{check_types, TEGraph};
use super::rules::{rules, Phase, RuleContext};
use egg::{Id, Runner, StopReason};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Limits for one phase. The e-graph carries over from phase to phase, so `node_limit` bounds
/// its total size (every earlier phase's growth included), not the phase's own growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub node_limit: usize,
    pub iter_limit: usize,
    pub time_limit: Duration,
}

impl Budget {
    /// The default budget of `phase`, sized so that a TinyLlama-shaped block (a few hundred
    /// nodes) saturates far inside it and the sum of all time limits stays under a second per
    /// segment even when every phase runs out. Algebra and fusion chain many small steps (more
    /// iterations); recognition and merge finish in a few; fusion and selection add kernel
    /// alternatives (more nodes).
    pub fn default_for(phase: Phase) -> Budget {
        let (node_limit, iter_limit, millis) = match phase {
            Phase::Algebra => (20_000, 30, 200),
            Phase::Recognition => (20_000, 10, 100),
            Phase::Merge => (20_000, 10, 100),
            Phase::Fusion => (40_000, 30, 200),
            Phase::Selection => (60_000, 10, 200),
        };
        Budget {
            node_limit,
            iter_limit,
            time_limit: Duration::from_millis(millis),
        }
    }
}

/// What one phase did (for `explain`, logs and tests).
#[derive(Clone, Debug, Serialize)]
pub struct PhaseStats {
    pub phase: Phase,
    /// E-nodes and e-classes after the phase.
    pub nodes: usize,
    pub classes: usize,
    pub iterations: usize,
    pub seconds: f64,
    /// `saturated`, `node limit`, `iteration limit`, `time limit`, or `other: …`.
    pub stop_reason: String,
    /// How many times each rule changed the e-graph.
    pub rules_fired: BTreeMap<String, usize>,
}

/// Runs every phase's rules (see [`Phase::ALL`]) on `egraph` under `budgets(phase)`; returns the
/// saturated e-graph, `roots` re-canonicalized, and the stats of each phase. An ill-typed class
/// after a phase (a bug in one of its rules) is an error naming the phase.
pub fn saturate(
    egraph: TEGraph,
    roots: &[Id],
    ctx: &RuleContext,
    budgets: &dyn Fn(Phase) -> Budget,
) -> Result<(TEGraph, Vec<Id>, Vec<PhaseStats>), String> {
    let mut egraph = egraph;
    let mut stats = Vec::with_capacity(Phase::ALL.len());
    for phase in Phase::ALL {
        let rules = rules(phase, ctx);
        let budget = budgets(phase);
        let start = Instant::now();
        let runner = Runner::default()
            .with_egraph(egraph)
            .with_node_limit(budget.node_limit)
            .with_iter_limit(budget.iter_limit)
            .with_time_limit(budget.time_limit)
            .run(&rules);
        let seconds = start.elapsed().as_secs_f64();
        let mut rules_fired = BTreeMap::new();
        for (rule, n) in runner.iterations.iter().flat_map(|i| &i.applied) {
            *rules_fired.entry(rule.to_string()).or_insert(0) += n;
        }
        let stop_reason = match &runner.stop_reason {
            Some(StopReason::Saturated) => "saturated".to_string(),
            Some(StopReason::NodeLimit(_)) => "node limit".to_string(),
            Some(StopReason::IterationLimit(_)) => "iteration limit".to_string(),
            Some(StopReason::TimeLimit(_)) => "time limit".to_string(),
            Some(StopReason::Other(why)) => format!("other: {why}"),
            None => "not run".to_string(),
        };
        let iterations = runner.iterations.len();
        egraph = runner.egraph;
        check_types(&egraph).map_err(|e| format!("after the {} phase: {e}", phase.name()))?;
        stats.push(PhaseStats {
            phase,
            nodes: egraph.total_size(),
            classes: egraph.number_of_classes(),
            iterations,
            seconds,
            stop_reason,
            rules_fired,
        });
    }
    let roots = roots.iter().map(|&r| egraph.find(r)).collect();
    Ok((egraph, roots, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::TargetSpec;
    use crate::saturate::convert::graph_to_egraph;
    use tessera_ir::{BinaryOp, DType, Dim, DimEnv, Graph, NodeId, Op, RopeLayout, UnaryOp};

    /// One TinyLlama-1.1B decoder block over a symbolic `seq` with a KV cache of `past` rows:
    /// hidden 2048, 32 query heads and 4 KV heads of 64, MLP 5632.
    fn tinyllama_block() -> Graph {
        let (hidden, heads, kv_heads, head_dim, mlp) = (2048, 32, 4, 64, 5632);
        let mut g = Graph::new();
        let (seq, past) = (Dim::sym("seq"), Dim::sym("past"));
        let x = g.input(
            "x",
            DType::F32,
            vec![Dim::c(1), seq.clone(), Dim::from(hidden)],
        );
        let positions = g.input("positions", DType::I32, vec![Dim::c(1), seq.clone()]);
        let inv_freq = g.weight("inv_freq", DType::F32, &[head_dim / 2]);
        let op = |g: &mut Graph, op: Op, inputs: &[NodeId]| g.add(op, inputs).expect("well typed");
        let linear = |g: &mut Graph, x: NodeId, name: &str, n: usize, k: usize| {
            let w = g.weight(name, DType::F16, &[n, k]);
            g.add(Op::MatMul { transpose_b: true }, &[x, w])
                .expect("well typed")
        };
        let norm = |g: &mut Graph, x: NodeId, name: &str| {
            let w = g.weight(name, DType::F32, &[hidden]);
            g.add(Op::RmsNorm { eps: 1e-5 }, &[x, w])
                .expect("well typed")
        };
        let h = norm(&mut g, x, "input_layernorm.weight");
        let heads_of = |g: &mut Graph, x: NodeId, n: usize| {
            let shape = vec![Dim::c(1), seq.clone(), Dim::from(n), Dim::from(head_dim)];
            let x = op(g, Op::Reshape { shape }, &[x]);
            op(
                g,
                Op::Permute {
                    perm: vec![0, 2, 1, 3],
                },
                &[x],
            )
        };
        let q = linear(&mut g, h, "q_proj.weight", heads * head_dim, hidden);
        let k = linear(&mut g, h, "k_proj.weight", kv_heads * head_dim, hidden);
        let v = linear(&mut g, h, "v_proj.weight", kv_heads * head_dim, hidden);
        let (q, k, v) = (
            heads_of(&mut g, q, heads),
            heads_of(&mut g, k, kv_heads),
            heads_of(&mut g, v, kv_heads),
        );
        let rope = Op::Rope {
            layout: RopeLayout::Half,
        };
        let q = g.add(rope.clone(), &[q, positions, inv_freq]).unwrap();
        let k = g.add(rope, &[k, positions, inv_freq]).unwrap();
        let cache_shape = vec![Dim::c(1), Dim::from(kv_heads), past, Dim::from(head_dim)];
        let cache_k = g.input("cache.k", DType::F32, cache_shape.clone());
        let cache_v = g.input("cache.v", DType::F32, cache_shape);
        let k = g.add(Op::KvAppend, &[cache_k, k]).unwrap();
        let v = g.add(Op::KvAppend, &[cache_v, v]).unwrap();
        let attention = Op::Attention {
            scale: 0.125,
            causal: true,
            window: None,
        };
        let a = g.add(attention, &[q, k, v]).unwrap();
        let a = g
            .add(
                Op::Permute {
                    perm: vec![0, 2, 1, 3],
                },
                &[a],
            )
            .unwrap();
        let a = g
            .add(
                Op::Reshape {
                    shape: vec![Dim::c(1), seq, Dim::from(hidden)],
                },
                &[a],
            )
            .unwrap();
        let o = linear(&mut g, a, "o_proj.weight", hidden, hidden);
        let x = g.add(Op::Binary(BinaryOp::Add), &[x, o]).unwrap();
        let h = norm(&mut g, x, "post_attention_layernorm.weight");
        let gate = linear(&mut g, h, "gate_proj.weight", mlp, hidden);
        let up = linear(&mut g, h, "up_proj.weight", mlp, hidden);
        let gate = g.add(Op::Unary(UnaryOp::Silu), &[gate]).unwrap();
        let act = g.add(Op::Binary(BinaryOp::Mul), &[gate, up]).unwrap();
        let down = linear(&mut g, act, "down_proj.weight", hidden, mlp);
        let out = g.add(Op::Binary(BinaryOp::Add), &[x, down]).unwrap();
        g.output("out", out);
        g.output("cache.k", k);
        g.output("cache.v", v);
        g
    }

    fn run_block(budgets: &dyn Fn(Phase) -> Budget) -> (TEGraph, Vec<Id>, Vec<PhaseStats>) {
        let graph = tinyllama_block();
        let mut egraph = TEGraph::default();
        let ids = graph_to_egraph(&graph, &mut egraph);
        let roots: Vec<Id> = graph.outputs.iter().map(|(_, n)| ids[n]).collect();
        let target = TargetSpec::cpu_host();
        let env = DimEnv::new();
        let ctx = RuleContext {
            target: &target,
            env: &env,
        };
        saturate(egraph, &roots, &ctx, budgets).expect("the block saturates soundly")
    }

    #[test]
    fn tinyllama_block_merges_its_projections() {
        let (egraph, roots, stats) = run_block(&Budget::default_for);
        assert_eq!(
            stats.iter().map(|s| s.phase).collect::<Vec<_>>(),
            Phase::ALL
        );
        for s in &stats[..3] {
            assert_eq!(s.stop_reason, "saturated", "{s:?}");
        }
        // q, k, v: k·q, k·v, q·v and (k·q)·v; gate/up: one.
        assert_eq!(
            stats[2].rules_fired.get("merge-matmul"),
            Some(&5),
            "{:?}",
            stats[2]
        );
        assert!(roots.iter().all(|&r| egraph.find(r) == r));
        let seconds: f64 = stats.iter().map(|s| s.seconds).sum();
        let json = serde_json::to_string(&stats).expect("stats serialize");
        eprintln!(
            "TinyLlama block: {seconds:.3} s, {} nodes\n{json}",
            egraph.total_size()
        );
    }

    #[test]
    fn budgets_stop_phases() {
        let tiny = |_| Budget {
            node_limit: 10,
            iter_limit: 30,
            time_limit: Duration::from_secs(5),
        };
        let (_, _, stats) = run_block(&tiny);
        assert_eq!(stats[0].stop_reason, "node limit", "{:?}", stats[0]);
        let one = |_| Budget {
            node_limit: 100_000,
            iter_limit: 1,
            time_limit: Duration::from_secs(5),
        };
        let (_, _, stats) = run_block(&one);
        assert_eq!(stats[2].stop_reason, "iteration limit", "{:?}", stats[2]);
    }
}
