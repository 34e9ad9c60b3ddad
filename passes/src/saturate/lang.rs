//! The optimizer's e-graph language: one e-node per Graph op, plus `fused` (a computation several
//! ops merged into one body, not yet assigned a template) and `kernel` (a template instance).
//! Op attributes — and a kernel's template with its tile parameters — are [`Attr`] leaf children,
//! so rules can match them and alternative tilings of one computation share an e-class.

use egg::{define_language, Id, Symbol};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use tessera_ir::kernel::{BodyOp, KernelKind};
use tessera_ir::{BinaryOp, DType, Dim, ReduceOp, RopeLayout, UnaryOp};

define_language! {
    /// See the module documentation; child order follows `ir::Op`'s attributes, then its inputs.
    pub enum TNode {
        "input" = Input([Id; 1]),
        "weight" = Weight([Id; 1]),
        "const" = Const([Id; 1]),
        "unary" = Unary([Id; 2]),
        "binary" = Binary([Id; 3]),
        "select" = Select([Id; 3]),
        "cast" = Cast([Id; 2]),
        "reduce" = Reduce([Id; 4]),
        "reshape" = Reshape([Id; 2]),
        "permute" = Permute([Id; 2]),
        "expand" = Expand([Id; 2]),
        "slice" = Slice([Id; 4]),
        "concat" = Concat(Box<[Id]>),
        "gather" = Gather([Id; 2]),
        "matmul" = MatMul([Id; 3]),
        "softmax" = Softmax([Id; 1]),
        "rms_norm" = RmsNorm([Id; 3]),
        "layer_norm" = LayerNorm([Id; 4]),
        "rope" = Rope([Id; 4]),
        "attention" = Attention([Id; 6]),
        // (attention_masked scale causal window q k v mask): `Attention` with its additive mask.
        "attention_masked" = AttentionMasked([Id; 7]),
        "dequantize" = Dequantize([Id; 1]),
        "quant_matmul" = QuantMatMul([Id; 3]),
        "kv_append" = KvAppend([Id; 2]),
        // (fused BODY arg0 arg1 …): the body's ops over the args, one future kernel.
        "fused" = Fused(Box<[Id]>),
        // (kernel KIND BODY arg0 arg1 …): a template instance computing BODY.
        "kernel" = Kernel(Box<[Id]>),
        Attr(Attr),
    }
}

/// A float attribute compared and hashed by its bits (e-nodes need `Eq + Hash + Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bits(pub u64);

impl Bits {
    pub fn new(v: f64) -> Bits {
        Bits(v.to_bits())
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// A kernel or fused body, keyed by its canonical JSON so e-nodes can hash and compare it cheaply.
#[derive(Clone, Debug)]
pub struct Body {
    key: Symbol,
    pub ops: Arc<Vec<BodyOp>>,
}

impl Body {
    pub fn new(ops: Vec<BodyOp>) -> Body {
        let key = Symbol::from(serde_json::to_string(&ops).expect("body ops serialize"));
        Body {
            key,
            ops: Arc::new(ops),
        }
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.key == other.key
    }
}
impl Eq for Body {}
impl std::hash::Hash for Body {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.key.hash(h)
    }
}
impl PartialOrd for Body {
    fn partial_cmp(&self, other: &Body) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Body {
    fn cmp(&self, other: &Body) -> std::cmp::Ordering {
        self.key.as_str().cmp(other.key.as_str())
    }
}

/// An attribute leaf. Its text form (`Display`/`FromStr`) has no spaces or parentheses, so
/// patterns and dumps can spell it: `u:silu`, `b:add`, `i:3`, `f:0.125`, `d:[batch,seq]`, …
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Attr {
    Name(Symbol),
    Int(i64),
    Bool(bool),
    Float(Bits),
    Dim(Dim),
    Dims(Vec<Dim>),
    Axes(Vec<usize>),
    DType(DType),
    Unary(UnaryOp),
    Binary(BinaryOp),
    Reduce(ReduceOp),
    Layout(RopeLayout),
    Window(Option<usize>),
    Kind(KernelKind),
    Body(Body),
}

/// An attribute enum's serde name (`silu`, `gelu_tanh`): the text `FromStr` reads back.
fn serde_name<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v)
        .map(|t| t.trim_matches('"').to_string())
        .unwrap_or_default()
}

fn compact(d: &Dim) -> String {
    d.to_string().replace(' ', "")
}

fn list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(","))
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attr::Name(s) => write!(f, "n:{s}"),
            Attr::Int(i) => write!(f, "i:{i}"),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Float(b) => write!(f, "f:{}", b.get()),
            Attr::Dim(d) => write!(f, "dim:{}", compact(d)),
            Attr::Dims(ds) => write!(f, "d:{}", list(ds, compact)),
            Attr::Axes(a) => write!(f, "a:{}", list(a, |x| x.to_string())),
            Attr::DType(t) => write!(f, "t:{t}"),
            Attr::Unary(u) => write!(f, "u:{}", serde_name(u)),
            Attr::Binary(b) => write!(f, "b:{}", serde_name(b)),
            Attr::Reduce(r) => write!(f, "r:{}", serde_name(r)),
            Attr::Layout(l) => write!(f, "l:{}", serde_name(l)),
            Attr::Window(None) => f.write_str("w:none"),
            Attr::Window(Some(w)) => write!(f, "w:{w}"),
            Attr::Kind(k) => write!(
                f,
                "k:{}",
                serde_json::to_string(k)
                    .map_err(|_| fmt::Error)?
                    .replace(' ', "")
            ),
            // JSON of ops has spaces only inside dims (`past + seq`), which parse without them.
            Attr::Body(b) => write!(f, "body:{}", b.key.as_str().replace(' ', "")),
        }
    }
}

fn from_serde_name<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(&format!("\"{text}\"")).map_err(|_| format!("unknown value `{text}`"))
}

fn parse_list<T>(text: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or(format!("expected [..], got `{text}`"))?;
    inner.split(',').filter(|s| !s.is_empty()).map(f).collect()
}

impl FromStr for Attr {
    type Err = String;
    fn from_str(s: &str) -> Result<Attr, String> {
        if let Ok(b) = s.parse::<bool>() {
            return Ok(Attr::Bool(b));
        }
        let (tag, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("not an attribute: `{s}`"))?;
        let int = |t: &str| t.parse::<i64>().map_err(|e| e.to_string());
        Ok(match tag {
            "n" => Attr::Name(Symbol::from(rest)),
            "i" => Attr::Int(int(rest)?),
            "f" => Attr::Float(Bits::new(rest.parse::<f64>().map_err(|e| e.to_string())?)),
            "dim" => Attr::Dim(Dim::parse(rest)?),
            "d" => Attr::Dims(parse_list(rest, Dim::parse)?),
            "a" => Attr::Axes(parse_list(rest, |t| {
                t.parse::<usize>().map_err(|e| e.to_string())
            })?),
            "t" => {
                Attr::DType(DType::parse(rest).ok_or_else(|| format!("unknown dtype `{rest}`"))?)
            }
            "u" => Attr::Unary(from_serde_name(rest)?),
            "b" => Attr::Binary(from_serde_name(rest)?),
            "r" => Attr::Reduce(from_serde_name(rest)?),
            "l" => Attr::Layout(from_serde_name(rest)?),
            "w" if rest == "none" => Attr::Window(None),
            "w" => Attr::Window(Some(int(rest)? as usize)),
            "k" => Attr::Kind(serde_json::from_str(rest).map_err(|e| e.to_string())?),
            "body" => {
                let ops: Vec<BodyOp> = serde_json::from_str(rest).map_err(|e| e.to_string())?;
                Attr::Body(Body::new(ops))
            }
            _ => return Err(format!("unknown attribute tag `{tag}` in `{s}`")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egg::RecExpr;
    use tessera_ir::Op;

    #[test]
    fn attributes_round_trip_through_text() {
        let body = Body::new(vec![BodyOp {
            op: Op::Softmax,
            args: vec![tessera_ir::kernel::BodyArg::Input(0)],
        }]);
        let attrs = [
            Attr::Name(Symbol::from("model.layers.0.q_proj.weight")),
            Attr::Int(-3),
            Attr::Bool(true),
            Attr::Float(Bits::new(0.125)),
            Attr::Dim(Dim::sym("past") + Dim::sym("seq")),
            Attr::Dims(vec![Dim::sym("batch"), Dim::c(64)]),
            Attr::Axes(vec![0, 2, 1, 3]),
            Attr::DType(DType::Bf16),
            Attr::Unary(UnaryOp::GeluTanh),
            Attr::Binary(BinaryOp::Add),
            Attr::Reduce(ReduceOp::Mean),
            Attr::Layout(RopeLayout::Half),
            Attr::Window(Some(4096)),
            Attr::Window(None),
            Attr::Kind(KernelKind::Gemv {
                tile_n: 8,
                split_k: 2,
            }),
            Attr::Body(body),
        ];
        for a in attrs {
            let text = a.to_string();
            assert!(!text.contains(' ') && !text.contains('('), "{text}");
            assert_eq!(text.parse::<Attr>().unwrap(), a, "{text}");
        }
    }

    #[test]
    fn expressions_parse() {
        let e: RecExpr<TNode> = "(binary b:add (input n:x) (const f:0))".parse().unwrap();
        assert_eq!(e.to_string(), "(binary b:add (input n:x) (const f:0))");
    }
}
