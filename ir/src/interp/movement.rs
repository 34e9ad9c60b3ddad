//! Movement ops: reshape, permute, expand, slice, concat, gather and KV append. They copy values
//! without looking at them, so each is written once for every element type — including quantized
//! tensors, moved in whole blocks.

use super::layout::{broadcast_strides, strides, walk};
use super::{Tensor, TensorData};

/// A rearrangement of one or more buffers that does not depend on their element type.
trait Rearrange {
    fn apply<T: Copy>(&self, parts: &[&[T]]) -> Vec<T>;
}

/// Runs `r` on buffers that must share one storage class.
fn rearrange(parts: &[&TensorData], r: &impl Rearrange) -> Result<TensorData, String> {
    macro_rules! per_class {
        ($($class:ident),*) => {
            match parts.first() {
                $(Some(TensorData::$class(_)) => {
                    let slices = parts
                        .iter()
                        .map(|p| match p {
                            TensorData::$class(v) => Ok(v.as_slice()),
                            _ => Err("inputs hold different element types".to_string()),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(TensorData::$class(r.apply(&slices)))
                })*
                None => Err("no inputs".into()),
            }
        };
    }
    per_class!(F32, I32, Bool, Bytes)
}

/// A tensor's shape counted in the pieces movement may move: elements, or for quantized tensors
/// whole blocks (the last axis then counts blocks of `unit` bytes).
struct Units {
    shape: Vec<usize>,
    /// Buffer items per piece: 1, or the bytes of a block.
    unit: usize,
    /// Elements per piece along the last axis: 1, or the values of a block.
    per_block: usize,
}

impl Units {
    fn of(t: &Tensor) -> Units {
        let mut shape = t.shape.clone();
        match t.dtype.quant_block() {
            None => Units {
                shape,
                unit: 1,
                per_block: 1,
            },
            Some(b) => {
                if let Some(last) = shape.last_mut() {
                    *last /= b.elems;
                }
                Units {
                    shape,
                    unit: b.bytes,
                    per_block: b.elems,
                }
            }
        }
    }

    /// An extent or index along the last axis in pieces; one that splits a block is an error.
    fn last(&self, n: usize) -> Result<usize, String> {
        if n.is_multiple_of(self.per_block) {
            Ok(n / self.per_block)
        } else {
            Err(format!(
                "{n} along the last axis splits a block of {} quantized values",
                self.per_block
            ))
        }
    }
}

/// A strided window onto one buffer (in pieces of `unit` items): permute, expand and slice are
/// all views copied out in row-major order.
struct View {
    shape: Vec<usize>,
    strides: Vec<usize>,
    offset: usize,
    unit: usize,
}

impl Rearrange for View {
    fn apply<T: Copy>(&self, parts: &[&[T]]) -> Vec<T> {
        let src = parts[0];
        let mut out = Vec::with_capacity(self.shape.iter().product::<usize>() * self.unit);
        walk(&self.shape, [&self.strides], |[o]| {
            let at = (self.offset + o) * self.unit;
            out.extend_from_slice(&src[at..at + self.unit]);
        });
        out
    }
}

/// Interleaves parts block by block: for each of `outer` rows, `chunks[i]` items of part `i`.
struct Join {
    outer: usize,
    chunks: Vec<usize>,
}

impl Rearrange for Join {
    fn apply<T: Copy>(&self, parts: &[&[T]]) -> Vec<T> {
        let mut out = Vec::with_capacity(self.outer * self.chunks.iter().sum::<usize>());
        for o in 0..self.outer {
            for (p, &c) in parts.iter().zip(&self.chunks) {
                out.extend_from_slice(&p[o * c..(o + 1) * c]);
            }
        }
        out
    }
}

/// Rows `ids` (each `len` items) of one buffer, in order.
struct Rows {
    ids: Vec<usize>,
    len: usize,
}

impl Rearrange for Rows {
    fn apply<T: Copy>(&self, parts: &[&[T]]) -> Vec<T> {
        let mut out = Vec::with_capacity(self.ids.len() * self.len);
        for &id in &self.ids {
            out.extend_from_slice(&parts[0][id * self.len..(id + 1) * self.len]);
        }
        out
    }
}

fn view(x: &Tensor, out_shape: Vec<usize>, v: View) -> Result<Tensor, String> {
    Ok(Tensor {
        dtype: x.dtype,
        shape: out_shape,
        data: rearrange(&[&x.data], &v)?,
    })
}

/// Same elements, row-major, in `shape`. Quantized data keeps its bytes: blocks are runs of
/// consecutive values, so any shape whose last axis is whole blocks lays them out identically.
pub(super) fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor, String> {
    if shape.iter().product::<usize>() != x.numel() {
        return Err(format!("cannot reshape {} to {shape:?}", x.describe()));
    }
    Ok(Tensor {
        dtype: x.dtype,
        shape: shape.to_vec(),
        data: x.data.clone(),
    })
}

/// Output axis `i` is input axis `perm[i]`; quantized tensors must keep their last axis.
pub(super) fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor, String> {
    let rank = x.shape.len();
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return Err(format!("{perm:?} is not a permutation of rank {rank}"));
    }
    if x.dtype.is_quantized() && perm.last().map(|&p| p + 1) != Some(rank) {
        return Err(format!(
            "permute {perm:?} moves the blocked last axis of {}",
            x.describe()
        ));
    }
    let u = Units::of(x);
    let own = strides(&u.shape);
    let v = View {
        shape: perm.iter().map(|&p| u.shape[p]).collect(),
        strides: perm.iter().map(|&p| own[p]).collect(),
        offset: 0,
        unit: u.unit,
    };
    view(x, perm.iter().map(|&p| x.shape[p]).collect(), v)
}

/// Broadcasts size-1 axes (and new leading axes) of `x` to `shape`.
pub(super) fn expand(x: &Tensor, shape: &[usize]) -> Result<Tensor, String> {
    let u = Units::of(x);
    let mut to = shape.to_vec();
    if let Some(last) = to.last_mut() {
        *last = u.last(*last)?;
    }
    let v = View {
        strides: broadcast_strides(&u.shape, &to)?,
        shape: to,
        offset: 0,
        unit: u.unit,
    };
    view(x, shape.to_vec(), v)
}

/// Elements `start..end` of `axis`.
pub(super) fn slice(x: &Tensor, axis: usize, start: usize, end: usize) -> Result<Tensor, String> {
    let size = *x
        .shape
        .get(axis)
        .ok_or_else(|| format!("axis {axis} is out of rank {}", x.shape.len()))?;
    if start > end || end > size {
        return Err(format!(
            "slice {start}..{end} of axis {axis} with size {size}"
        ));
    }
    let u = Units::of(x);
    let (s, e) = if axis + 1 == x.shape.len() {
        (u.last(start)?, u.last(end)?)
    } else {
        (start, end)
    };
    let own = strides(&u.shape);
    let mut shape = u.shape.clone();
    shape[axis] = e - s;
    let v = View {
        shape,
        offset: s * own[axis],
        strides: own,
        unit: u.unit,
    };
    let mut out_shape = x.shape.clone();
    out_shape[axis] = end - start;
    view(x, out_shape, v)
}

/// Joins `parts` along `axis`; every other axis and the dtype must agree.
pub(super) fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor, String> {
    let first = parts.first().ok_or("concat of nothing")?;
    if axis >= first.shape.len() {
        return Err(format!("axis {axis} is out of rank {}", first.shape.len()));
    }
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    let mut chunks = Vec::with_capacity(parts.len());
    for p in parts {
        let fits = p.dtype == first.dtype
            && p.shape.len() == first.shape.len()
            && p.shape
                .iter()
                .zip(&first.shape)
                .enumerate()
                .all(|(i, (a, b))| i == axis || a == b);
        if !fits {
            return Err(format!(
                "cannot concat {} with {} along axis {axis}",
                p.describe(),
                first.describe()
            ));
        }
        shape[axis] += p.shape[axis];
        let u = Units::of(p);
        chunks.push(u.shape[axis..].iter().product::<usize>() * u.unit);
    }
    let join = Join {
        outer: first.shape[..axis].iter().product(),
        chunks,
    };
    let data: Vec<&TensorData> = parts.iter().map(|p| &p.data).collect();
    Ok(Tensor {
        dtype: first.dtype,
        shape,
        data: rearrange(&data, &join)?,
    })
}

/// Rows of `table` (axis 0) picked by integer `ids`: shape `ids.shape ++ table.shape[1..]`.
/// Quantized tables give f32 rows; an id outside the table is an error.
pub(super) fn gather(table: &Tensor, ids: &Tensor) -> Result<Tensor, String> {
    let ids_v = ids
        .as_i32()
        .ok_or_else(|| format!("gather ids must be integers, got {}", ids.describe()))?;
    let (&rows, rest) = table
        .shape
        .split_first()
        .ok_or("gather from a scalar table")?;
    if table.dtype.is_quantized() && rest.is_empty() {
        return Err(format!(
            "gathering single values of {} splits blocks",
            table.describe()
        ));
    }
    let picked = ids_v
        .iter()
        .map(|&id| {
            usize::try_from(id)
                .ok()
                .filter(|&i| i < rows)
                .ok_or_else(|| format!("id {id} out of range for table of {rows} rows"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let u = Units::of(table);
    let r = Rows {
        ids: picked,
        len: u.shape[1..].iter().product::<usize>() * u.unit,
    };
    let mut shape = ids.shape.clone();
    shape.extend_from_slice(rest);
    let out = Tensor {
        dtype: table.dtype,
        shape,
        data: rearrange(&[&table.data], &r)?,
    };
    if out.dtype.is_quantized() {
        Ok(Tensor::f32(out.shape.clone(), out.to_f32()?))
    } else {
        Ok(out)
    }
}

/// The KV cache `[B, H, P, D]` with `new` `[B, H, S, D]` appended along the sequence axis.
pub(super) fn kv_append(cache: &Tensor, new: &Tensor) -> Result<Tensor, String> {
    if cache.shape.len() != 4 || new.shape.len() != 4 {
        return Err(format!(
            "kv_append needs [B, H, P, D] and [B, H, S, D], got {} and {}",
            cache.describe(),
            new.describe()
        ));
    }
    concat(&[cache, new], 2)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::{DType, Dim, Graph, Op};

    fn iota(shape: &[usize]) -> Tensor {
        let n = shape.iter().product::<usize>();
        Tensor::f32(shape.to_vec(), (0..n).map(|v| v as f32).collect())
    }

    #[test]
    fn permute_expand_slice_by_hand() {
        let x = iota(&[2, 3]);
        let t = permute(&x, &[1, 0]).unwrap();
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.as_f32(), Some(&[0., 3., 1., 4., 2., 5.][..]));
        let e = expand(&iota(&[2, 1]), &[3, 2, 2]).unwrap();
        assert_eq!(e.as_f32(), Some(&[0., 0., 1., 1.].repeat(3)[..]));
        let s = slice(&iota(&[3, 4]), 1, 1, 3).unwrap();
        assert_eq!(s.shape, vec![3, 2]);
        assert_eq!(s.as_f32(), Some(&[1., 2., 5., 6., 9., 10.][..]));
        assert!(slice(&x, 1, 2, 4).is_err());
        assert!(slice(&x, 2, 0, 1).is_err());
        assert!(permute(&x, &[0, 0]).is_err());
        assert!(expand(&x, &[3, 3]).is_err());
        assert!(reshape(&x, &[4]).is_err());
        assert_eq!(reshape(&x, &[3, 2]).unwrap().as_f32(), x.as_f32());
    }

    #[test]
    fn concat_and_kv_append_by_hand() {
        let a = iota(&[2, 1]);
        let b = Tensor::f32(vec![2, 2], vec![10., 11., 12., 13.]);
        let c = concat(&[&a, &b], 1).unwrap();
        assert_eq!(c.shape, vec![2, 3]);
        assert_eq!(c.as_f32(), Some(&[0., 10., 11., 1., 12., 13.][..]));
        assert!(concat(&[&a, &iota(&[3, 1])], 1).is_err());
        // cache [1, 2, 2, 2] + new [1, 2, 1, 2] → [1, 2, 3, 2], per head: past rows then new row.
        let cache = iota(&[1, 2, 2, 2]);
        let new = Tensor::f32(vec![1, 2, 1, 2], vec![-1., -2., -3., -4.]);
        let kv = kv_append(&cache, &new).unwrap();
        assert_eq!(kv.shape, vec![1, 2, 3, 2]);
        let want = [0., 1., 2., 3., -1., -2., 4., 5., 6., 7., -3., -4.];
        assert_eq!(kv.as_f32(), Some(&want[..]));
        assert!(kv_append(&cache, &iota(&[2, 1, 2])).is_err());
    }

    #[test]
    fn gather_rows_plain_and_quantized() {
        let table = iota(&[4, 2]);
        let ids = Tensor::i32(vec![2, 2], vec![3, 0, 1, 3]);
        let g = gather(&table, &ids).unwrap();
        assert_eq!(g.shape, vec![2, 2, 2]);
        assert_eq!(g.as_f32(), Some(&[6., 7., 0., 1., 2., 3., 6., 7.][..]));
        let values: Vec<f32> = (0..96).map(|v| (v as f32 - 40.0) / 8.0).collect();
        let q = Tensor::quantize(DType::Q8_0, vec![3, 32], &values).unwrap();
        let all = q.to_f32().unwrap();
        let g = gather(&q, &Tensor::i32(vec![2], vec![2, 1])).unwrap();
        assert_eq!(g.dtype, DType::F32);
        assert_eq!(g.as_f32().unwrap(), [&all[64..96], &all[32..64]].concat());
        let err = gather(&table, &Tensor::i32(vec![1], vec![-1])).unwrap_err();
        assert_eq!(err, "id -1 out of range for table of 4 rows");
        assert!(gather(&table, &Tensor::f32(vec![1], vec![0.0])).is_err());
    }

    #[test]
    fn quantized_tensors_move_in_whole_blocks() {
        let values: Vec<f32> = (0..128).map(|v| (v as f32).sin()).collect();
        let q = Tensor::quantize(DType::Q4_0, vec![2, 64], &values).unwrap();
        let deq = |t: &Tensor| t.to_f32().unwrap();
        let all = deq(&q);
        let s = slice(&q, 1, 32, 64).unwrap();
        assert_eq!(deq(&s), [&all[32..64], &all[96..128]].concat());
        assert!(slice(&q, 1, 16, 48).unwrap_err().contains("splits a block"));
        let rows = slice(&q, 0, 1, 2).unwrap();
        assert_eq!(deq(&rows), &all[64..]);
        let both = concat(&[&s, &s], 1).unwrap();
        assert_eq!(both.shape, vec![2, 64]);
        assert_eq!(deq(&both)[..64], [&all[32..64], &all[32..64]].concat());
        let p = permute(
            &Tensor::quantize(DType::Q4_0, vec![2, 1, 32], &values[..64]).unwrap(),
            &[1, 0, 2],
        );
        assert_eq!(deq(&p.unwrap()), &all[..64]);
        assert!(permute(&q, &[1, 0]).is_err());
        let e = expand(&rows, &[3, 64]).unwrap();
        assert_eq!(deq(&e), all[64..].repeat(3));
        assert_eq!(deq(&reshape(&q, &[4, 32]).unwrap()), all);
    }

    #[test]
    fn symbolic_slice_and_gather_error_through_run() {
        let mut g = Graph::new();
        g.set_scope("model.layers.0");
        let x = g.input("x", DType::F32, vec![Dim::sym("seq"), Dim::c(2)]);
        let last = Op::Slice {
            axis: 0,
            start: Dim::sym("seq") - Dim::c(1),
            end: Dim::sym("seq"),
        };
        let y = g.add(last, &[x]).unwrap();
        g.output("last", y);
        let out = run_one(&g, &[("x", iota(&[3, 2]))], "last");
        assert_eq!(
            (out.shape.clone(), out.as_f32()),
            (vec![1, 2], Some(&[4.0, 5.0][..]))
        );

        let mut g = Graph::new();
        g.set_scope("model.embed");
        let ids = g.input("ids", DType::I32, vec![Dim::sym("seq")]);
        let table = g.weight("embed", DType::F32, &[512, 2]);
        let e = g.add(Op::Gather, &[table, ids]).unwrap();
        g.output("e", e);
        let w = weights(&[("embed", iota(&[512, 2]))]);
        let err = super::super::run(
            &g,
            &w,
            &feed(&[("ids", Tensor::i32(vec![2], vec![1, 900]))]),
        );
        let msg = err.unwrap_err().to_string();
        assert!(
            msg.contains("%2 gather in model.embed: id 900 out of range for table of 512 rows"),
            "{msg}"
        );
    }
}
