//! A small artifact for the executors' tests: two elementwise launches through the arena and a
//! view between them.

use tessera_ir::artifact::{self, Manifest};
use tessera_ir::kernel::{
    BodyArg, BodyOp, Buffer, BufferId, BufferSource, KernelGraph, KernelKind,
};
use tessera_ir::lir::{self, Access, Axis, KernelBuilder, ScalarType, SizeExpr, Special};
use tessera_ir::memory_plan::{MemoryPlan, Slot};
use tessera_ir::{
    BinaryOp, DType, Dim, EntryPoint, Graph, ModelInfo, Module, Op, TensorType, WeightSpec,
};

/// `y[i] = x[i] + w[0]` for `i < past`, one element per group.
pub(crate) fn add_w_kernel() -> lir::Kernel {
    let mut b = KernelBuilder::new("add_w");
    let x = b.buffer("x", ScalarType::F32, Access::Read);
    let w = b.buffer("w", ScalarType::F32, Access::Read);
    let y = b.buffer("y", ScalarType::F32, Access::Write);
    b.scalar("past", ScalarType::I64);
    b.grid([SizeExpr::Param(0), SizeExpr::Const(1), SizeExpr::Const(1)]);
    let i = b.special(Special::GroupId(Axis::X));
    let zero = b.const_i(0);
    let xv = b.load(x, i, 1);
    let wv = b.load(w, zero, 1);
    let s = b.add(xv, wv);
    b.store(y, i, s);
    b.finish()
}

/// An artifact for `target` (`cpu`, `vulkan`: its code is [`add_w_kernel`] for both) whose one
/// entry point computes `y = reshape(x + w) + w` on `x: [past]`: two launches through the arena
/// and a view that launches nothing.
pub(crate) fn write_add_artifact(path: &std::path::Path, target: &str) {
    write_artifact_with(path, target, 0);
}

/// [`write_add_artifact`] with one more weight, `unread`, of `unread_bytes` bytes (none when 0)
/// that no kernel reads: for a model too large for a device.
pub(crate) fn write_artifact_with(path: &std::path::Path, target: &str, unread_bytes: usize) {
    let code = || vec![lir::Program::single(add_w_kernel()); 3];
    let past = || vec![Dim::sym("past")];
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, past());
    let w = g.weight("w", DType::F32, &[1]);
    let t = g.add(Op::Binary(BinaryOp::Add), &[x, w]).unwrap();
    let r = g.add(Op::Reshape { shape: past() }, &[t]).unwrap();
    let y = g.add(Op::Binary(BinaryOp::Add), &[r, w]).unwrap();
    g.output("y", y);
    let buffer = |dims: Vec<Dim>, source| Buffer {
        ty: TensorType::new(DType::F32, dims),
        source,
    };
    let add = |input: u32, output: u32| tessera_ir::kernel::Kernel {
        scope: "main".into(),
        kind: KernelKind::Elementwise,
        body: vec![BodyOp {
            op: Op::Binary(BinaryOp::Add),
            args: vec![BodyArg::Input(0), BodyArg::Input(1)],
        }],
        inputs: vec![BufferId(input), BufferId(1)],
        output: BufferId(output),
        estimate_seconds: 0.0,
    };
    let reshape = tessera_ir::kernel::Kernel {
        scope: "main".into(),
        kind: KernelKind::Layout,
        body: vec![BodyOp {
            op: Op::Reshape { shape: past() },
            args: vec![BodyArg::Input(0)],
        }],
        inputs: vec![BufferId(2)],
        output: BufferId(3),
        estimate_seconds: 0.0,
    };
    let slot = |b: u32, first, last| Slot {
        buffer: BufferId(b),
        first,
        last,
        bytes: Dim::sym("past") * Dim::c(4),
    };
    let kernels = KernelGraph {
        buffers: vec![
            buffer(past(), BufferSource::Input("x".into())),
            buffer(vec![Dim::c(1)], BufferSource::Weight("w".into())),
            buffer(past(), BufferSource::Computed),
            buffer(past(), BufferSource::Computed),
            buffer(past(), BufferSource::Computed),
        ],
        kernels: vec![add(0, 2), reshape, add(3, 4)],
        outputs: vec![("y".into(), BufferId(4))],
        derived_weights: vec![],
        plan: MemoryPlan {
            slots: vec![slot(2, 0, 2), slot(4, 2, 2)],
            aliases: vec![tessera_ir::memory_plan::Alias {
                buffer: BufferId(3),
                of: BufferId(2),
            }],
        },
    };
    let module = Module {
        info: ModelInfo {
            architecture: "test".into(),
            vocab_size: 1,
            max_context: 1,
            bos_token_id: None,
            eos_token_ids: vec![],
            num_layers: 0,
            hidden_size: 1,
        },
        weights: [("w", 1), ("unread", unread_bytes / 4)]
            .into_iter()
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| WeightSpec {
                name: name.into(),
                dtype: DType::F32,
                shape: vec![n],
            })
            .collect(),
        state: vec![],
        entries: vec![EntryPoint {
            name: "decode".into(),
            graph: g,
            kernels: Some(kernels),
            cpu_code: if target == "cpu" { code() } else { vec![] },
            gpu_code: if target == "vulkan" { code() } else { vec![] },
        }],
    };
    let w = 10.0f32.to_le_bytes();
    let unread = vec![0u8; unread_bytes / 4 * 4];
    let manifest = Manifest {
        producer: "test".into(),
        target: target.into(),
        source: "unit".into(),
        config: serde_json::Value::Null,
        weight_slots: artifact::layout_weights(
            [("w", w.len() as u64), ("unread", unread.len() as u64)]
                .into_iter()
                .filter(|&(_, n)| n > 0),
        ),
        module,
    };
    let mut file = std::fs::File::create(path).unwrap();
    let mut weights = [&w[..], &unread[..]].into_iter().filter(|b| !b.is_empty());
    artifact::write(&mut file, &manifest, None, &mut weights, &mut |_| {}).unwrap();
}
