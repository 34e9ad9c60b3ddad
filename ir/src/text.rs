//! The readable text dump of graphs and modules (`tessera explain --emit graph`, test failures).

use crate::{Graph, Module, Op};
use std::fmt;

fn attrs(op: &Op) -> String {
    match op {
        Op::Input { name } | Op::Weight { name } => format!(" \"{name}\""),
        Op::Constant { value } => format!(" {value}"),
        Op::Unary(u) => format!(".{}", snake(&format!("{u:?}"))),
        Op::Binary(b) => format!(".{}", snake(&format!("{b:?}"))),
        Op::Cast { to } => format!(" to={to}"),
        Op::Reduce {
            op,
            axes,
            keep_dims,
        } => {
            format!(
                ".{} axes={axes:?}{}",
                snake(&format!("{op:?}")),
                if *keep_dims { " keep_dims" } else { "" }
            )
        }
        Op::Reshape { shape } | Op::Expand { shape } => format!(" {}", crate::shape_string(shape)),
        Op::Permute { perm } => format!(" {perm:?}"),
        Op::Slice { axis, start, end } => format!(" axis={axis} [{start}..{end}]"),
        Op::Concat { axis } => format!(" axis={axis}"),
        Op::MatMul { transpose_b } | Op::QuantMatMul { transpose_b } if *transpose_b => {
            " b^T".into()
        }
        Op::RmsNorm { eps } | Op::LayerNorm { eps } => format!(" eps={eps:e}"),
        Op::Rope { layout } => format!(" {}", snake(&format!("{layout:?}"))),
        Op::Attention {
            scale,
            causal,
            window,
        } => {
            let mut s = format!(" scale={scale}");
            if *causal {
                s.push_str(" causal");
            }
            if let Some(w) = window {
                s.push_str(&format!(" window={w}"));
            }
            s
        }
        _ => String::new(),
    }
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut scope = "";
        for (i, node) in self.nodes.iter().enumerate() {
            if node.scope != scope {
                scope = &node.scope;
                writeln!(f, "  # {scope}")?;
            }
            let args: Vec<String> = node.inputs.iter().map(|x| x.to_string()).collect();
            let sep = if args.is_empty() { "" } else { " " };
            writeln!(
                f,
                "  %{i}: {} = {}{}{sep}{}",
                node.ty,
                node.op.name(),
                attrs(&node.op),
                args.join(", ")
            )?;
        }
        for (name, id) in &self.outputs {
            writeln!(f, "  output {name} = {id}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.info;
        writeln!(
            f,
            "module {} (layers {}, hidden {}, vocab {})",
            i.architecture, i.num_layers, i.hidden_size, i.vocab_size
        )?;
        for w in &self.weights {
            writeln!(f, "weight {}: {}{:?}", w.name, w.dtype, w.shape)?;
        }
        for s in &self.state {
            writeln!(
                f,
                "state {}: {}{}",
                s.name,
                s.dtype,
                crate::shape_string(&s.shape)
            )?;
        }
        for e in &self.entries {
            writeln!(f, "entry {} ({} nodes)", e.name, e.graph.nodes.len())?;
            write!(f, "{}", e.graph)?;
            if let Some(kg) = &e.kernels {
                writeln!(f, "kernels of {} ({} kernels)", e.name, kg.kernels.len())?;
                write!(f, "{kg}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{DType, Dim, Graph, Op, UnaryOp};

    #[test]
    fn dump_is_readable() {
        let mut g = Graph::new();
        g.set_scope("mlp");
        let x = g.input("x", DType::F32, vec![Dim::sym("seq"), Dim::c(4)]);
        let y = g.add(Op::Unary(UnaryOp::GeluTanh), &[x]).unwrap();
        g.output("y", y);
        let text = g.to_string();
        assert!(text.contains("%0: f32[seq, 4] = input \"x\""), "{text}");
        assert!(
            text.contains("%1: f32[seq, 4] = unary.gelu_tanh %0"),
            "{text}"
        );
        assert!(text.contains("output y = %1"), "{text}");
    }
}
