//! A Module of one entry point around a test Graph, its weight specs read off the Graph's weight
//! nodes (the unit tests of the weight-storage passes need a Module, not a model).

use tessera_ir::{eval_shape, DimEnv, EntryPoint, Graph, ModelInfo, Module, Op, WeightSpec};

/// `g` as entry point `entry` of a Module declaring every weight `g` reads.
pub(crate) fn single_entry(entry: &str, g: Graph) -> Module {
    let weights = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Weight { name } => Some(WeightSpec {
                name: name.clone(),
                dtype: n.ty.dtype,
                shape: eval_shape(&n.ty.shape, &DimEnv::new()).expect("constant weight shape"),
            }),
            _ => None,
        })
        .collect();
    Module {
        info: ModelInfo {
            architecture: "test".into(),
            vocab_size: 5,
            max_context: 16,
            bos_token_id: None,
            eos_token_ids: vec![],
            num_layers: 0,
            hidden_size: 64,
        },
        weights,
        state: vec![],
        entries: vec![EntryPoint {
            name: entry.into(),
            graph: g,
            kernels: None,
            cpu_code: vec![],
            gpu_code: vec![],
        }],
    }
}
