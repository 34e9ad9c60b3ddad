//! The text form of LIR (`Display`), for dumps, `explain` and test expectations.

use super::{
    Access, Axis, Inst, Intrinsic, Kernel, Literal, MemorySpace, ScalarType, SizeExpr, Special,
    Stmt, Type, Value,
};
use std::fmt::{self, Display, Formatter, Write};

impl Display for ScalarType {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Display for Type {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        match self.lanes {
            1 => f.write_str(self.scalar.name()),
            n => write!(f, "{}x{n}", self.scalar.name()),
        }
    }
}

impl Display for Value {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

impl Display for Special {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let axis = |a: &Axis| match a {
            Axis::X => "x",
            Axis::Y => "y",
            Axis::Z => "z",
        };
        match self {
            Special::GroupId(a) => write!(f, "group_id.{}", axis(a)),
            Special::NumGroups(a) => write!(f, "num_groups.{}", axis(a)),
            Special::LocalId(a) => write!(f, "local_id.{}", axis(a)),
            Special::GroupSize(a) => write!(f, "group_size.{}", axis(a)),
            Special::SubgroupId => f.write_str("subgroup_id"),
            Special::SubgroupLane => f.write_str("subgroup_lane"),
            Special::SubgroupSize => f.write_str("subgroup_size"),
        }
    }
}

fn space_name(space: MemorySpace) -> &'static str {
    match space {
        MemorySpace::Global => "global",
        MemorySpace::Shared => "shared",
        MemorySpace::Private => "private",
    }
}

/// Lower-case snake name of a unit-like enum variant (`Rsqrt` → `rsqrt`, `ReadWrite` →
/// `read_write`).
fn snake(debug: impl fmt::Debug) -> String {
    let mut out = String::new();
    for (i, c) in format!("{debug:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn values(vs: &[Value]) -> String {
    vs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Kernel {
    pub(super) fn size(&self, e: &SizeExpr) -> String {
        match e {
            SizeExpr::Const(c) => c.to_string(),
            SizeExpr::Param(i) => self
                .scalars
                .get(*i)
                .map_or_else(|| format!("param{i}"), |p| p.name.clone()),
            SizeExpr::Add(a, b) => format!("({} + {})", self.size(a), self.size(b)),
            SizeExpr::Mul(a, b) => format!("{}*{}", self.size(a), self.size(b)),
            SizeExpr::CeilDiv(a, d) => format!("ceil({}/{d})", self.size(a)),
        }
    }

    fn inst_text(&self, inst: &Inst) -> String {
        match inst {
            Inst::Const(Literal::F(x)) => format!("const {x}"),
            Inst::Const(Literal::I(x)) => format!("const {x}"),
            Inst::Const(Literal::Bool(x)) => format!("const {x}"),
            Inst::Param(i) => format!(
                "param {}",
                self.scalars
                    .get(*i)
                    .map_or("<missing>", |p| p.name.as_str())
            ),
            Inst::Special(s) => s.to_string(),
            Inst::Unary(op, a) => format!("{} {a}", snake(op)),
            Inst::Binary(op, a, b) => format!("{} {a}, {b}", snake(op)),
            Inst::Fma(a, b, c) => format!("fma {a}, {b}, {c}"),
            Inst::Cmp(op, a, b) => format!("cmp.{} {a}, {b}", snake(op)),
            Inst::Select(c, a, b) => format!("select {c}, {a}, {b}"),
            Inst::Cast(_, a) => format!("cast {a}"),
            Inst::Bitcast(_, a) => format!("bitcast {a}"),
            Inst::Splat(_, a) => format!("splat {a}"),
            Inst::Extract(a, lane) => format!("extract {a}, {lane}"),
            Inst::Concat(parts) => format!("concat {}", values(parts)),
            Inst::ReduceLanes(op, a) => format!("reduce_lanes.{} {a}", snake(op)),
            Inst::Load { buf, index, .. } => format!("load {}[{index}]", self.buffer_name(*buf)),
            Inst::Intrinsic(i, args) => {
                let name = match i {
                    Intrinsic::SubgroupReduce(op) => format!("subgroup_reduce.{}", snake(op)),
                    Intrinsic::MmaSync { m, n, k } => format!("mma_sync.m{m}n{n}k{k}"),
                    Intrinsic::AsyncCopy { dst, src, ty } => format!(
                        "async_copy.{ty} {} <- {}",
                        self.buffer_name(*dst),
                        self.buffer_name(*src)
                    ),
                    other => snake(other),
                };
                format!("{name}({})", values(args))
            }
        }
    }

    fn value_decl(&self, v: Value) -> String {
        match self.values.get(v.index()) {
            Some(t) => format!("{v}: {t}"),
            None => format!("{v}: <untyped>"),
        }
    }

    fn block(&self, out: &mut String, stmts: &[Stmt], depth: usize) -> fmt::Result {
        let pad = "  ".repeat(depth);
        for stmt in stmts {
            match stmt {
                Stmt::Let(v, inst) => writeln!(
                    out,
                    "{pad}{} = {}",
                    self.value_decl(*v),
                    self.inst_text(inst)
                )?,
                Stmt::Store { buf, index, value } => writeln!(
                    out,
                    "{pad}store {}[{index}] = {value}",
                    self.buffer_name(*buf)
                )?,
                Stmt::For {
                    iv,
                    start,
                    end,
                    step,
                    carried,
                    body,
                    yields,
                    results,
                } => {
                    write!(
                        out,
                        "{pad}for {} in {start}..{end} step {step}",
                        self.value_decl(*iv)
                    )?;
                    if !carried.is_empty() {
                        let list: Vec<String> = carried
                            .iter()
                            .map(|c| format!("{} = {}", c.param, c.init))
                            .collect();
                        write!(out, " carry({})", list.join(", "))?;
                    }
                    writeln!(out, " {{")?;
                    self.block(out, body, depth + 1)?;
                    if !yields.is_empty() {
                        writeln!(out, "{pad}  yield {}", values(yields))?;
                    }
                    match results.as_slice() {
                        [] => writeln!(out, "{pad}}}")?,
                        _ => writeln!(out, "{pad}}} -> {}", values(results))?,
                    }
                }
                Stmt::If { cond, then_, else_ } => {
                    writeln!(out, "{pad}if {cond} {{")?;
                    self.block(out, then_, depth + 1)?;
                    if !else_.is_empty() {
                        writeln!(out, "{pad}}} else {{")?;
                        self.block(out, else_, depth + 1)?;
                    }
                    writeln!(out, "{pad}}}")?;
                }
                Stmt::Barrier => writeln!(out, "{pad}barrier")?,
            }
        }
        Ok(())
    }
}

impl Display for Kernel {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let buffers: Vec<String> = self
            .buffers
            .iter()
            .map(|b| {
                let access = match b.access {
                    Access::Read => "read",
                    Access::Write => "write",
                    Access::ReadWrite => "read_write",
                };
                format!("{}: global {} {access}", b.name, b.elem.name())
            })
            .collect();
        let scalars: Vec<String> = self
            .scalars
            .iter()
            .map(|s| format!("{}: {}", s.name, s.ty.name()))
            .collect();
        let [wx, wy, wz] = self.workgroup_size;
        let grid: Vec<String> = self.grid.iter().map(|e| self.size(e)).collect();
        writeln!(
            f,
            "kernel {}({}; {}) workgroup [{wx},{wy},{wz}] grid [{}]",
            self.name,
            buffers.join(", "),
            scalars.join(", "),
            grid.join(", ")
        )?;
        for l in &self.locals {
            writeln!(
                f,
                "  local {}: {} {}[{}]",
                l.name,
                space_name(l.space),
                l.elem.name(),
                l.len
            )?;
        }
        let mut body = String::new();
        self.block(&mut body, &self.body, 1)?;
        f.write_str(&body)
    }
}
