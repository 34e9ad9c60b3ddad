//! One soundness proptest per rule, named after it, and the registry check: a rule without an
//! entry here fails the build's tests, so no rule reaches the optimizer unproven.

use super::cases::*;
use super::{check_rule, with_context};
use crate::saturate::rules::registry;
use proptest::prelude::*;
use std::collections::BTreeSet;
use tessera_ir::BinaryOp;

/// Cases per rule: enough to cover the generators' shapes and forms, few enough for two cores.
const CASES: u32 = 32;

/// `test_name: "rule-name" => case generator;` — a proptest checking the rule on the generator's
/// cases, and the rule's entry in `PROVEN`.
macro_rules! proven {
    ($($test:ident: $rule:literal => $cases:expr;)*) => {
        /// Every rule that has a soundness proptest below.
        const PROVEN: &[&str] = &[$($rule),*];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(CASES))]
            $(
                #[test]
                fn $test(case in $cases) {
                    check_rule($rule, &case)?;
                }
            )*
        }
    };
}

proven! {
    permute_permute: "permute-permute" => permute_chain();
    permute_identity: "permute-identity" => identity_permute();
    reshape_reshape: "reshape-reshape" => reshape_chain();
    reshape_identity: "reshape-identity" => same_shape_reshape();
    cast_identity: "cast-identity" => same_dtype_casts();
    fold_unary: "fold-unary" => unary_of_constant();
    fold_binary: "fold-binary" => binary_of_constants();
    mul_const_right: "mul-const-right" => scalar_op(BinaryOp::Mul, any_constant(), true);
    add_const_right: "add-const-right" => scalar_op(BinaryOp::Add, any_constant(), true);
    hoist_scale_lhs: "hoist-scale-lhs" => scaled_lhs();
    sink_scale_lhs: "sink-scale-lhs" => scaled_product();
    hoist_scale_rhs: "hoist-scale-rhs" => scaled_rhs();
    sink_scale_rhs: "sink-scale-rhs" => scaled_product();
    matmul_transpose_b: "matmul-transpose-b" => transposed_rhs();
    mul_one: "mul-one" => scalar_op(BinaryOp::Mul, Just(1.0), false);
    one_mul: "one-mul" => scalar_op(BinaryOp::Mul, Just(1.0), true);
    div_one: "div-one" => scalar_op(BinaryOp::Div, Just(1.0), false);
    add_zero: "add-zero" => scalar_op(BinaryOp::Add, Just(0.0), false);
    zero_add: "zero-add" => scalar_op(BinaryOp::Add, Just(0.0), true);
    sub_zero: "sub-zero" => scalar_op(BinaryOp::Sub, Just(0.0), false);
    attention: "attention" => written_out_attention(false);
    attention_masked: "attention-masked" => written_out_attention(true);
    quant_matmul: "quant-matmul" => dequantized_matmul();
    merge_matmul: "merge-matmul" => projections(false);
    merge_quant_matmul: "merge-quant-matmul" => projections(true);
    lift_to_fused: "lift-to-fused" => mini_block();
    fuse_producer: "fuse-producer" => mini_block();
    select_template: "select-template" => mini_block();
}

#[test]
fn every_rule_has_a_soundness_test() {
    let registry = with_context(registry);
    let mut seen = BTreeSet::new();
    let duplicated: Vec<&str> = registry
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !seen.insert(*n))
        .collect();
    assert!(
        duplicated.is_empty(),
        "rule names must be unique: {duplicated:?}"
    );
    let missing: Vec<String> = registry
        .iter()
        .filter(|(name, _)| !PROVEN.contains(&name.as_str()))
        .map(|(name, phase)| format!("{name} ({})", phase.name()))
        .collect();
    assert!(
        missing.is_empty(),
        "rules without a soundness proptest: {missing:?}. Every rule needs one: add a generator of \
         graphs it fires on to saturate/soundness/cases.rs and a line to `proven!` in \
         saturate/soundness/proven.rs."
    );
}
