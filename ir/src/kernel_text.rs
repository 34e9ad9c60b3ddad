//! The readable text dump of KernelGraphs (`tessera inspect --graphs`, test failures): the buffers,
//! the derived weights, one line per kernel, the outputs.

use crate::kernel::{BodyOp, BufferSource, KernelGraph};
use std::fmt;

/// The body's op names joined by `+`, e.g. `matmul+binary+unary`: how dumps and profiles tell
/// kernels of one template apart.
pub fn op_names(body: &[BodyOp]) -> String {
    let names: Vec<&str> = body.iter().map(|b| b.op.name()).collect();
    names.join("+")
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    let parts: Vec<String> = items.iter().map(T::to_string).collect();
    parts.join(", ")
}

impl fmt::Display for KernelGraph {
    /// Buffers, then derived weights, then kernels as
    /// `{scope}: {kind} ({ops}) -> {output type}  ~{estimate} µs  [{inputs} -> {output}]`, then
    /// outputs; every line indented by two spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.buffers.iter().enumerate() {
            match &b.source {
                BufferSource::Input(name) => writeln!(f, "  b{i}: {} = input \"{name}\"", b.ty)?,
                BufferSource::Weight(name) => writeln!(f, "  b{i}: {} = weight \"{name}\"", b.ty)?,
                BufferSource::Computed => writeln!(f, "  b{i}: {}", b.ty)?,
            }
        }
        for d in &self.derived_weights {
            let sources: Vec<String> = d.sources.iter().map(|s| format!("\"{s}\"")).collect();
            writeln!(
                f,
                "  derived \"{}\" = {} ({})",
                d.name,
                op_names(&d.body),
                sources.join(", ")
            )?;
        }
        for k in &self.kernels {
            let ty = self
                .buffers
                .get(k.output.0 as usize)
                .map_or_else(|| "?".to_string(), |b| b.ty.to_string());
            writeln!(
                f,
                "  {}: {} ({}) -> {ty}  ~{:.1} µs  [{} -> {}]",
                k.scope,
                k.kind,
                op_names(&k.body),
                k.estimate_seconds * 1e6,
                list(&k.inputs),
                k.output
            )?;
        }
        for (name, id) in &self.outputs {
            writeln!(f, "  output {name} = {id}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::kernel::tests::sample;
    use crate::kernel::{BodyArg, BodyOp, DerivedWeight};
    use crate::Op;

    #[test]
    fn dump_is_readable() {
        let mut kg = sample();
        kg.derived_weights.push(DerivedWeight {
            name: "w1x2".into(),
            sources: vec!["w1".into(), "w1".into()],
            body: vec![BodyOp {
                op: Op::Concat { axis: 0 },
                args: vec![BodyArg::Input(0), BodyArg::Input(1)],
            }],
        });
        let text = kg.to_string();
        for line in [
            "  b0: i32[batch, seq] = input \"tokens\"\n",
            "  b1: f32[10, 4] = weight \"embed\"\n",
            "  b10: f32[batch, 2, past + seq, 4]\n",
            "  model.layers.0.mlp: gemm{tile 64x64x32, stages 2} (matmul+binary+unary) \
             -> f32[batch, seq, 8]  ~1.5 µs  [b2, b3, b4 -> b5]\n",
            "  model.layers.0.attn: layout (reshape) -> f32[batch, seq, 2, 4]  ~1.5 µs  [b5 -> b9]\n",
            "  derived \"w1x2\" = concat (\"w1\", \"w1\")\n",
            "  output cache = b10\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
