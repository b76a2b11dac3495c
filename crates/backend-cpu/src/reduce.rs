//! Reductions of the CPU backend along one axis (sum, max, min, argmax) and the softmax along an axis.

use crate::elem::{buf, Buf, CpuElem};
use crate::nn;
use crate::par::{for_each_chunk, PAR_THRESHOLD};
use rate_core::{AxisView, ReduceOp};

pub(crate) fn reduce<T: CpuElem>(op: ReduceOp, x: &Buf<T>, v: AxisView) -> Buf<T> {
    let AxisView { outer, len, inner } = v;
    let mut out = vec![T::zero(); outer * inner];
    let body = |(o, dst): (usize, &mut [T])| {
        let block = &x[o * len * inner..(o + 1) * len * inner];
        match op {
            ReduceOp::Sum => {
                for l in 0..len {
                    let row = &block[l * inner..(l + 1) * inner];
                    for (d, &s) in dst.iter_mut().zip(row) {
                        *d += s;
                    }
                }
            }
            ReduceOp::Max | ReduceOp::Min | ReduceOp::ArgMax => {
                for j in 0..inner {
                    let mut best = block[j];
                    let mut arg = 0usize;
                    for l in 1..len {
                        let val = block[l * inner + j];
                        let better = match op {
                            ReduceOp::Min => val < best,
                            _ => val > best,
                        };
                        if better || (val.is_nan() && !best.is_nan()) {
                            best = val;
                            arg = l;
                        }
                    }
                    dst[j] = if op == ReduceOp::ArgMax { T::of(arg as f64) } else { best };
                }
            }
        }
    };
    if inner == 0 {
        return buf(out);
    }
    for_each_chunk(&mut out, inner, outer * len * inner >= PAR_THRESHOLD && outer > 1, body);
    buf(out)
}

pub(crate) fn softmax<T: CpuElem>(x: &Buf<T>, v: AxisView) -> Buf<T> {
    if v.inner == 1 {
        return buf(nn::softmax_rows(x, v.len));
    }
    let AxisView { outer, len, inner } = v;
    let mut out = vec![T::zero(); x.len()];
    if out.is_empty() {
        return buf(out);
    }
    let body = |(o, dst): (usize, &mut [T])| {
        let src = &x[o * len * inner..(o + 1) * len * inner];
        for j in 0..inner {
            let mut mx = T::neg_infinity();
            for l in 0..len {
                mx = mx.max(src[l * inner + j]);
            }
            let mut s = T::zero();
            for l in 0..len {
                let e = (src[l * inner + j] - mx).exp();
                dst[l * inner + j] = e;
                s += e;
            }
            let r = T::one() / s;
            for l in 0..len {
                dst[l * inner + j] *= r;
            }
        }
    };
    for_each_chunk(&mut out, len * inner, x.len() >= PAR_THRESHOLD && outer > 1, body);
    buf(out)
}
