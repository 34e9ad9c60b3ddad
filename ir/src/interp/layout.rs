//! Index arithmetic shared by the ops: row-major strides, numpy broadcasting, and one row-major
//! walk over strided operands that every broadcasting or rearranging loop is written with.

/// Row-major strides of a contiguous tensor of `shape`, in elements.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut out = vec![1; shape.len()];
    for i in (1..shape.len()).rev() {
        out[i - 1] = out[i] * shape[i];
    }
    out
}

/// The numpy broadcast of `shapes`: axes align from the right and a dim of 1 stretches.
pub(super) fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1; rank];
    for s in shapes {
        for (o, &d) in out[rank - s.len()..].iter_mut().zip(*s) {
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(format!("shapes {shapes:?} do not broadcast"));
            }
        }
    }
    Ok(out)
}

/// Strides that read a contiguous tensor of `shape` as if it were broadcast to `to`: 0 along
/// stretched and new leading axes.
pub(super) fn broadcast_strides(shape: &[usize], to: &[usize]) -> Result<Vec<usize>, String> {
    let fail = || format!("shape {shape:?} does not broadcast to {to:?}");
    let lead = to.len().checked_sub(shape.len()).ok_or_else(fail)?;
    let mut out = vec![0; to.len()];
    for (i, (&d, s)) in shape.iter().zip(strides(shape)).enumerate() {
        if d == to[lead + i] {
            out[lead + i] = s;
        } else if d != 1 {
            return Err(fail());
        }
    }
    Ok(out)
}

/// Calls `f` once per position of `shape`, in row-major order, with the position's offset into
/// each of `N` operands laid out with the given strides. The innermost axis is a plain loop, so
/// contiguous operands are read sequentially.
pub(super) fn walk<const N: usize>(
    shape: &[usize],
    strides: [&[usize]; N],
    mut f: impl FnMut([usize; N]),
) {
    if shape.contains(&0) {
        return;
    }
    let Some((&inner, outer)) = shape.split_last() else {
        f([0; N]);
        return;
    };
    let step: [usize; N] = std::array::from_fn(|k| strides[k][outer.len()]);
    let mut index = vec![0usize; outer.len()];
    let mut base = [0usize; N];
    loop {
        let mut at = base;
        for _ in 0..inner {
            f(at);
            at.iter_mut().zip(&step).for_each(|(a, s)| *a += s);
        }
        // Advance the odometer over the outer axes, innermost first.
        let mut axis = outer.len();
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            index[axis] += 1;
            base.iter_mut()
                .zip(&strides)
                .for_each(|(b, s)| *b += s[axis]);
            if index[axis] < outer[axis] {
                break;
            }
            base.iter_mut()
                .zip(&strides)
                .for_each(|(b, s)| *b -= s[axis] * outer[axis]);
            index[axis] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides_and_broadcasting() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(strides(&[]), Vec::<usize>::new());
        assert_eq!(broadcast_shapes(&[&[2, 1, 3], &[4, 1]]), Ok(vec![2, 4, 3]));
        assert_eq!(broadcast_shapes(&[&[0], &[1]]), Ok(vec![0]));
        assert!(broadcast_shapes(&[&[2], &[3]]).is_err());
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), Ok(vec![0, 1, 0]));
        assert!(broadcast_strides(&[3, 2], &[3, 4]).is_err());
        assert!(broadcast_strides(&[1, 3], &[3]).is_err());
    }

    #[test]
    fn walk_visits_row_major_offsets() {
        // A [2, 3] tensor read transposed from a [3, 2] buffer, and a broadcast row.
        let mut seen = Vec::new();
        walk(&[2, 3], [&[1, 2], &[0, 1]], |[a, b]| seen.push((a, b)));
        assert_eq!(seen, [(0, 0), (2, 1), (4, 2), (1, 0), (3, 1), (5, 2)]);
        let mut count = 0;
        walk(&[], [&[]], |[o]| count += 1 + o);
        walk(&[3, 0], [&[0, 1]], |_| count += 100);
        assert_eq!(count, 1);
    }
}
