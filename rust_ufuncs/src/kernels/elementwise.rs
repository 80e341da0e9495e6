//! Element-wise binary operations and row scaling, with IEEE semantics.

use super::Real;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Subtract,
    Multiply,
    Divide,
}

impl BinaryOp {
    #[inline(always)]
    pub fn apply<T: Real>(self, a: T, b: T) -> T {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Subtract => a - b,
            BinaryOp::Multiply => a * b,
            BinaryOp::Divide => a / b,
        }
    }
}

/// One operand of a binary operation: a run of values, or one value broadcast to every position.
#[derive(Clone, Copy, Debug)]
pub enum Operand<'a, T> {
    Values(&'a [T]),
    Broadcast(T),
}

/// `out[i] = op(a[i], b[i])`.
pub fn binary<T: Real>(op: BinaryOp, a: Operand<T>, b: Operand<T>, out: &mut [T]) {
    for operand in [a, b] {
        if let Operand::Values(v) = operand {
            assert_eq!(v.len(), out.len(), "operand length");
        }
    }
    // One monomorphic loop per (op, operand kinds), so each vectorises.
    match op {
        BinaryOp::Add => apply_all(a, b, out, |x, y| BinaryOp::Add.apply(x, y)),
        BinaryOp::Subtract => apply_all(a, b, out, |x, y| BinaryOp::Subtract.apply(x, y)),
        BinaryOp::Multiply => apply_all(a, b, out, |x, y| BinaryOp::Multiply.apply(x, y)),
        BinaryOp::Divide => apply_all(a, b, out, |x, y| BinaryOp::Divide.apply(x, y)),
    }
}

#[inline(always)]
fn apply_all<T: Real>(a: Operand<T>, b: Operand<T>, out: &mut [T], f: impl Fn(T, T) -> T) {
    match (a, b) {
        (Operand::Values(a), Operand::Values(b)) => {
            for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
                *o = f(x, y);
            }
        }
        (Operand::Values(a), Operand::Broadcast(y)) => {
            for (o, &x) in out.iter_mut().zip(a) {
                *o = f(x, y);
            }
        }
        (Operand::Broadcast(x), Operand::Values(b)) => {
            for (o, &y) in out.iter_mut().zip(b) {
                *o = f(x, y);
            }
        }
        (Operand::Broadcast(x), Operand::Broadcast(y)) => out.fill(f(x, y)),
    }
}

/// Row `i` of `x` (rows of width `d`) times `weights[i]`, into `out`.
pub fn scale_rows<T: Real>(x: &[T], d: usize, weights: &[T], out: &mut [T]) {
    assert_eq!(x.len(), out.len(), "input and output lengths");
    assert_eq!(x.len(), weights.len() * d, "one weight per row");
    if d == 0 {
        return;
    }
    for ((row, out_row), &w) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).zip(weights) {
        binary(
            BinaryOp::Multiply,
            Operand::Values(row),
            Operand::Broadcast(w),
            out_row,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_ops_follow_ieee() {
        let a = [1.0f64, -2.0, 0.0, f64::INFINITY, 6.0];
        let b = [4.0f64, 0.5, 0.0, 1.0, -3.0];
        let mut out = [0.0; 5];
        binary(
            BinaryOp::Add,
            Operand::Values(&a),
            Operand::Values(&b),
            &mut out,
        );
        assert_eq!(out, [5.0, -1.5, 0.0, f64::INFINITY, 3.0]);
        binary(
            BinaryOp::Subtract,
            Operand::Values(&a),
            Operand::Values(&b),
            &mut out,
        );
        assert_eq!(out, [-3.0, -2.5, 0.0, f64::INFINITY, 9.0]);
        binary(
            BinaryOp::Multiply,
            Operand::Values(&a),
            Operand::Values(&b),
            &mut out,
        );
        assert_eq!(out, [4.0, -1.0, 0.0, f64::INFINITY, -18.0]);
        binary(
            BinaryOp::Divide,
            Operand::Values(&a),
            Operand::Values(&b),
            &mut out,
        );
        assert_eq!(out[..2], [0.25, -4.0]);
        assert!(out[2].is_nan());
        assert_eq!(out[3..], [f64::INFINITY, -2.0]);
    }

    #[test]
    fn broadcast_operands() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let mut out = vec![0.0f32; 37];
        binary(
            BinaryOp::Subtract,
            Operand::Broadcast(100.0),
            Operand::Values(&a),
            &mut out,
        );
        assert!(out.iter().zip(&a).all(|(o, x)| *o == 100.0 - x));
        binary(
            BinaryOp::Divide,
            Operand::Values(&a),
            Operand::Broadcast(2.0),
            &mut out,
        );
        assert!(out.iter().zip(&a).all(|(o, x)| *o == x / 2.0));
        binary(
            BinaryOp::Add,
            Operand::Broadcast(1.0),
            Operand::Broadcast(2.0),
            &mut out,
        );
        assert!(out.iter().all(|&o| o == 3.0));
    }

    #[test]
    fn scale_rows_multiplies_each_row_by_its_weight() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut out = [0.0f32; 6];
        scale_rows(&x, 3, &[2.0, -1.0], &mut out);
        assert_eq!(out, [2.0, 4.0, 6.0, -4.0, -5.0, -6.0]);
        scale_rows::<f64>(&[], 0, &[1.0, 2.0], &mut []);
    }
}
