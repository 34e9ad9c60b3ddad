//! The activation arena: which kernel-written buffers are alive when, their sizes as symbolic
//! expressions, and — once a shape bucket binds the symbols — offsets that let buffers whose
//! lifetimes do not overlap share memory. Inputs, weights and the KV cache state are not in the
//! arena; a lone reshape (launched as nothing) is a view of its source, not a buffer of its own.

use tessera_ir::kernel::{BodyArg, BufferId, BufferSource, Kernel, KernelGraph};
use tessera_ir::memory_plan::{Alias, MemoryPlan, Slot};
use tessera_ir::{DType, Dim};
use thiserror::Error;

/// Why a KernelGraph cannot be planned or placed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PlanError {
    #[error("buffer {buffer} is computed as {dtype}: block-quantized tensors are only weights")]
    Quantized { buffer: BufferId, dtype: DType },
    #[error("buffer {buffer} is computed but no kernel writes it")]
    NeverWritten { buffer: BufferId },
    #[error("buffer {buffer} is written by kernel {first} and again by kernel {second}")]
    WrittenTwice {
        buffer: BufferId,
        first: usize,
        second: usize,
    },
    #[error("{user} refers to buffer {buffer}, which does not exist")]
    UnknownBuffer { buffer: BufferId, user: String },
    #[error("size of buffer {buffer}: {message}")]
    Size { buffer: BufferId, message: String },
    #[error(transparent)]
    Offsets(#[from] tessera_ir::IrError),
}

/// Plans the computed buffers of `kg`: liveness by kernel index, symbolic sizes, and views.
pub fn plan(kg: &KernelGraph) -> Result<MemoryPlan, PlanError> {
    let known = |buffer: BufferId, user: &dyn Fn() -> String| {
        if (buffer.0 as usize) < kg.buffers.len() {
            Ok(buffer)
        } else {
            Err(PlanError::UnknownBuffer {
                buffer,
                user: user(),
            })
        }
    };
    // Where each buffer's memory is: itself, or the buffer a free reshape views.
    let mut storage: Vec<BufferId> = (0..kg.buffers.len() as u32).map(BufferId).collect();
    let mut writer: Vec<Option<usize>> = vec![None; kg.buffers.len()];
    let mut last: Vec<usize> = vec![0; kg.buffers.len()];
    for (k, kernel) in kg.kernels.iter().enumerate() {
        let user = || format!("kernel {k} ({}, {})", kernel.kind, kernel.scope);
        for &input in &kernel.inputs {
            let s = storage[known(input, &user)?.0 as usize];
            last[s.0 as usize] = k;
        }
        let out = known(kernel.output, &user)?;
        if let Some(first) = writer[out.0 as usize].replace(k) {
            return Err(PlanError::WrittenTwice {
                buffer: out,
                first,
                second: k,
            });
        }
        last[out.0 as usize] = k;
        if let Some(source) = viewed_input(kernel) {
            storage[out.0 as usize] = storage[source.0 as usize];
        }
    }
    let end = kg.kernels.len().saturating_sub(1);
    for (name, output) in &kg.outputs {
        let user = || format!("output `{name}`");
        let s = storage[known(*output, &user)?.0 as usize];
        last[s.0 as usize] = end;
    }
    let mut plan = MemoryPlan::default();
    for (i, buffer) in kg.buffers.iter().enumerate() {
        let id = BufferId(i as u32);
        if buffer.source != BufferSource::Computed {
            continue;
        }
        let first = writer[i].ok_or(PlanError::NeverWritten { buffer: id })?;
        if storage[i] != id {
            plan.aliases.push(Alias {
                buffer: id,
                of: storage[i],
            });
            continue;
        }
        let elem = buffer.ty.dtype.elem_bytes().ok_or(PlanError::Quantized {
            buffer: id,
            dtype: buffer.ty.dtype,
        })?;
        let bytes = buffer
            .ty
            .shape
            .iter()
            .fold(Dim::c(elem as i64), |acc, d| acc * d.clone());
        plan.slots.push(Slot {
            buffer: id,
            first,
            last: last[i].max(first),
            bytes,
        });
    }
    Ok(plan)
}

/// The input whose memory a kernel's output occupies: a kernel that launches nothing (a chain of
/// reshapes) is a view of its input, and a KV append writes into the cache it extends (the cache
/// is allocated for the whole context, so appending is in place).
fn viewed_input(kernel: &Kernel) -> Option<BufferId> {
    let last = kernel.body.last()?;
    let in_place = matches!(last.op, tessera_ir::Op::KvAppend);
    if kernel.is_launched() && !in_place {
        return None;
    }
    let mut arg = match in_place {
        true => *last.args.first()?,
        false => BodyArg::Op(kernel.body.len() - 1),
    };
    loop {
        match arg {
            BodyArg::Input(i) => return kernel.inputs.get(i).copied(),
            BodyArg::Op(j) => arg = *kernel.body.get(j)?.args.first()?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_ir::kernel::{BodyOp, Buffer, KernelKind};
    use tessera_ir::memory_plan::{align_up, ARENA_ALIGN};
    use tessera_ir::DimEnv;
    use tessera_ir::{Op, TensorType, UnaryOp};

    fn buffer(dtype: DType, shape: &[Dim], source: BufferSource) -> Buffer {
        Buffer {
            ty: TensorType::new(dtype, shape.to_vec()),
            source,
        }
    }

    fn kernel(kind: KernelKind, op: Op, input: u32, output: u32) -> Kernel {
        Kernel {
            scope: "test".into(),
            kind,
            body: vec![BodyOp {
                op,
                args: vec![BodyArg::Input(0)],
            }],
            inputs: vec![BufferId(input)],
            output: BufferId(output),
            estimate_seconds: 0.0,
        }
    }

    fn exp(input: u32, output: u32) -> Kernel {
        kernel(
            KernelKind::Elementwise,
            Op::Unary(UnaryOp::Exp),
            input,
            output,
        )
    }

    /// x → exp → exp → … (`n` kernels), the last result the output `y`; every value [seq, 64] f32.
    fn chain(n: u32) -> KernelGraph {
        let shape = [Dim::sym("seq"), Dim::c(64)];
        let mut buffers = vec![buffer(DType::F32, &shape, BufferSource::Input("x".into()))];
        buffers.extend((0..n).map(|_| buffer(DType::F32, &shape, BufferSource::Computed)));
        KernelGraph {
            buffers,
            kernels: (0..n).map(|i| exp(i, i + 1)).collect(),
            outputs: vec![("y".into(), BufferId(n))],
            derived_weights: vec![],
            plan: Default::default(),
        }
    }

    fn seq(n: usize) -> DimEnv {
        [("seq".to_string(), n)].into()
    }

    #[test]
    fn chain_lifetimes_and_reuse() {
        let kg = chain(4);
        kg.verify().unwrap();
        let plan = plan(&kg).unwrap();
        let spans: Vec<(u32, usize, usize)> = plan
            .slots
            .iter()
            .map(|s| (s.buffer.0, s.first, s.last))
            .collect();
        assert_eq!(spans, vec![(1, 0, 1), (2, 1, 2), (3, 2, 3), (4, 3, 3)]);
        assert_eq!(plan.slots[0].bytes.to_string(), "256*seq");
        let (offsets, arena) = plan.offsets(&seq(3)).unwrap();
        let size = 3 * 64 * 4;
        assert_eq!(offsets.len(), 4);
        assert!(arena < 4 * size, "arena {arena} does not reuse memory");
        assert_eq!(
            arena,
            2 * align_up(size),
            "a chain ping-pongs between two buffers"
        );
        assert!(offsets.iter().all(|&(_, o)| o % ARENA_ALIGN == 0));
    }

    #[test]
    fn outputs_survive_to_the_end() {
        // b1 is an output written first; b2..b4 come after and must not reuse its memory.
        let mut kg = chain(4);
        kg.outputs.push(("early".into(), BufferId(1)));
        let plan = plan(&kg).unwrap();
        assert_eq!((plan.slots[0].first, plan.slots[0].last), (0, 3));
        let (offsets, _) = plan.offsets(&seq(5)).unwrap();
        let early = offsets[0].1;
        let size = 5 * 64 * 4;
        for &(b, o) in &offsets[1..] {
            assert!(
                o >= early + size || o + size <= early,
                "{b} overlaps the output"
            );
        }
    }

    #[test]
    fn free_reshapes_are_views() {
        // b1 = exp(x); b2 = reshape(b1) (no launch); b3 = exp(b2); b4 = exp(b3).
        let flat = [Dim::sym("seq"), Dim::c(64)];
        let split = [Dim::sym("seq"), Dim::c(8), Dim::c(8)];
        let kg = KernelGraph {
            buffers: vec![
                buffer(DType::F32, &flat, BufferSource::Input("x".into())),
                buffer(DType::F32, &flat, BufferSource::Computed),
                buffer(DType::F32, &split, BufferSource::Computed),
                buffer(DType::F32, &split, BufferSource::Computed),
                buffer(DType::F32, &split, BufferSource::Computed),
            ],
            kernels: vec![
                exp(0, 1),
                kernel(
                    KernelKind::Layout,
                    Op::Reshape {
                        shape: split.to_vec(),
                    },
                    1,
                    2,
                ),
                exp(2, 3),
                exp(3, 4),
            ],
            outputs: vec![("y".into(), BufferId(4))],
            derived_weights: vec![],
            plan: Default::default(),
        };
        kg.verify().unwrap();
        let plan = plan(&kg).unwrap();
        assert_eq!(
            plan.aliases,
            vec![Alias {
                buffer: BufferId(2),
                of: BufferId(1)
            }]
        );
        // b1 lives until b2's reader, kernel 2.
        assert_eq!((plan.slots[0].buffer, plan.slots[0].last), (BufferId(1), 2));
        let (offsets, _) = plan.offsets(&seq(2)).unwrap();
        let at = |b: u32| offsets.iter().find(|(x, _)| x.0 == b).unwrap().1;
        assert_eq!(at(2), at(1));
        assert_ne!(at(3), at(1), "kernel 2 reads b1's memory while writing b3");
    }

    #[test]
    fn errors_instead_of_panics() {
        let mut kg = chain(2);
        kg.buffers[1].ty.dtype = DType::Q8_0;
        assert!(matches!(plan(&kg), Err(PlanError::Quantized { .. })));

        let mut kg = chain(2);
        kg.buffers
            .push(buffer(DType::F32, &[Dim::c(1)], BufferSource::Computed));
        let err = plan(&kg).unwrap_err();
        assert_eq!(
            err,
            PlanError::NeverWritten {
                buffer: BufferId(3)
            }
        );

        let mut kg = chain(2);
        kg.kernels[1].output = BufferId(1);
        assert!(matches!(plan(&kg), Err(PlanError::WrittenTwice { .. })));

        let mut kg = chain(2);
        kg.outputs[0].1 = BufferId(9);
        assert!(plan(&kg).unwrap_err().to_string().contains("output `y`"));

        let err = plan(&chain(2))
            .unwrap()
            .offsets(&DimEnv::new())
            .unwrap_err();
        assert!(err.to_string().contains("seq"), "{err}");
    }

    #[test]
    fn kv_append_writes_into_its_cache() {
        let cache = [Dim::c(1), Dim::c(2), Dim::sym("past"), Dim::c(4)];
        let new = [Dim::c(1), Dim::c(2), Dim::c(1), Dim::c(4)];
        let appended = [
            Dim::c(1),
            Dim::c(2),
            Dim::sym("past") + Dim::c(1),
            Dim::c(4),
        ];
        let kg = KernelGraph {
            buffers: vec![
                buffer(DType::F32, &cache, BufferSource::Input("cache.0.k".into())),
                buffer(DType::F32, &new, BufferSource::Input("k".into())),
                buffer(DType::F32, &new, BufferSource::Computed),
                buffer(DType::F32, &appended, BufferSource::Computed),
            ],
            kernels: vec![
                exp(1, 2),
                Kernel {
                    body: vec![BodyOp {
                        op: Op::KvAppend,
                        args: vec![BodyArg::Input(0), BodyArg::Input(1)],
                    }],
                    inputs: vec![BufferId(0), BufferId(2)],
                    ..kernel(KernelKind::KvAppend, Op::KvAppend, 0, 3)
                },
            ],
            outputs: vec![("cache.0.k".into(), BufferId(3))],
            derived_weights: vec![],
            plan: Default::default(),
        };
        let plan = plan(&kg).unwrap();
        assert_eq!(
            plan.aliases,
            vec![Alias {
                buffer: BufferId(3),
                of: BufferId(0)
            }]
        );
        assert_eq!(
            plan.slots.iter().map(|s| s.buffer).collect::<Vec<_>>(),
            vec![BufferId(2)]
        );
    }

    #[test]
    fn inputs_and_weights_are_not_in_the_arena() {
        let plan = plan(&chain(1)).unwrap();
        assert_eq!(plan.slots.len(), 1);
        assert_eq!(plan.slots[0].buffer, BufferId(1));
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<MemoryPlan>(&json).unwrap(), plan);
    }
}
