//! All phases together, as `runner::saturate` runs them with the default budgets: the rules must
//! stay sound in combination (one rule's output feeding another's pattern), on graphs that mix
//! the single-rule cases.

use super::cases::*;
use super::{check_terms, with_context};
use crate::saturate::runner::{saturate, Budget};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn all_phases(case in prop_oneof![
        mini_block(),
        written_out_attention(false),
        written_out_attention(true),
        projections(false),
        projections(true),
        dequantized_matmul(),
        transposed_rhs(),
        scaled_lhs(),
        scaled_rhs(),
        permute_chain(),
        reshape_chain(),
        unary_of_constant(),
    ]) {
        check_terms(&case, "all phases", |egraph, root| {
            let (egraph, roots, _) =
                with_context(|ctx| saturate(egraph, &[root], ctx, &Budget::default_for))?;
            Ok((egraph, roots[0]))
        })?;
    }
}
