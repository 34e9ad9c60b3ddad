//! Helpers for the interpreter's tests: building inputs, running graphs, comparing floats.

use super::{run, Tensor};
use crate::{BinaryOp, Dim, Graph, NodeId, Op, Shape, UnaryOp};
use std::collections::BTreeMap;

/// Named tensors as `run` takes them.
pub fn feed(items: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    items
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// Named weights.
pub fn weights(items: &[(&str, Tensor)]) -> BTreeMap<String, Tensor> {
    feed(items)
}

/// A constant shape.
pub fn dims(shape: &[usize]) -> Shape {
    shape.iter().map(|&d| Dim::from(d)).collect()
}

/// Runs `g` without weights and returns output `name`, panicking with the error (tests only).
pub fn run_one(g: &Graph, inputs: &[(&str, Tensor)], name: &str) -> Tensor {
    let w: BTreeMap<String, Tensor> = BTreeMap::new();
    match run(g, &w, &feed(inputs)) {
        Ok(mut out) => out.remove(name).expect("output exists"),
        Err(e) => panic!("{e}\n{g}"),
    }
}

/// Deterministic pseudo-random values in [-2, 2) (xorshift), so proptest only draws seeds.
pub fn rand_f32(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// Asserts elementwise |a − b| ≤ tol·(1 + |b|).
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, b)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: {a} vs {b}\nactual   {actual:?}\nexpected {expected:?}"
        );
    }
}

/// Adds `op` to `g`, panicking on a type error (tests build well-typed graphs).
#[track_caller]
pub fn add(g: &mut Graph, op: Op, inputs: &[NodeId]) -> NodeId {
    match g.add(op, inputs) {
        Ok(id) => id,
        Err(e) => panic!("{e}\n{g}"),
    }
}

pub fn un(g: &mut Graph, op: UnaryOp, x: NodeId) -> NodeId {
    add(g, Op::Unary(op), &[x])
}

pub fn bin(g: &mut Graph, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
    add(g, Op::Binary(op), &[a, b])
}
