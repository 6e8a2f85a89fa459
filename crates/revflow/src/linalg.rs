//! Dense linear algebra on small host matrices (C×C channel mixers), in f64 so that
//! log-determinants and inverses are exact to far below f32 resolution.
//! Matrices are row-major `n*n` slices.

/// LU factorisation with partial pivoting: `P·A = L·U`.
pub struct Lu {
    n: usize,
    /// L (unit diagonal, below) and U (diagonal and above) packed together.
    lu: Vec<f64>,
    /// Row `i` of `P·A` is row `perm[i]` of `A`.
    perm: Vec<usize>,
}

impl Lu {
    pub fn new(a: &[f64], n: usize) -> Self {
        assert_eq!(a.len(), n * n);
        let mut lu = a.to_vec();
        let mut perm: Vec<usize> = (0..n).collect();
        for k in 0..n {
            let p = (k..n)
                .max_by(|&i, &j| lu[i * n + k].abs().total_cmp(&lu[j * n + k].abs()))
                .unwrap();
            if p != k {
                for c in 0..n {
                    lu.swap(k * n + c, p * n + c);
                }
                perm.swap(k, p);
            }
            let pivot = lu[k * n + k];
            if pivot == 0.0 {
                continue;
            }
            for i in k + 1..n {
                let f = lu[i * n + k] / pivot;
                lu[i * n + k] = f;
                for c in k + 1..n {
                    lu[i * n + c] -= f * lu[k * n + c];
                }
            }
        }
        Lu { n, lu, perm }
    }

    /// `log |det A|` (−∞ for a singular matrix).
    pub fn log_abs_det(&self) -> f64 {
        (0..self.n)
            .map(|i| self.lu[i * self.n + i].abs().ln())
            .sum()
    }

    /// `A⁻¹`, row-major.
    pub fn inverse(&self) -> Vec<f64> {
        let n = self.n;
        let mut inv = vec![0.0; n * n];
        for col in 0..n {
            // Solve A x = e_col: L y = P e_col, then U x = y.
            let mut x: Vec<f64> = self
                .perm
                .iter()
                .map(|&r| if r == col { 1.0 } else { 0.0 })
                .collect();
            for i in 0..n {
                for k in 0..i {
                    x[i] -= self.lu[i * n + k] * x[k];
                }
            }
            for i in (0..n).rev() {
                for k in i + 1..n {
                    x[i] -= self.lu[i * n + k] * x[k];
                }
                x[i] /= self.lu[i * n + i];
            }
            for row in 0..n {
                inv[row * n + col] = x[row];
            }
        }
        inv
    }

    /// `(P, L, U)` with `A = P·L·U`: P a permutation matrix, L unit lower, U upper.
    pub fn factors(&self) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let n = self.n;
        let (mut p, mut l, mut u) = (vec![0.0; n * n], vec![0.0; n * n], vec![0.0; n * n]);
        for i in 0..n {
            // P·A = L·U, so A = Pᵀ·L·U: column i of Pᵀ... row perm[i] of A is row i of PA.
            p[self.perm[i] * n + i] = 1.0;
            for j in 0..n {
                match i.cmp(&j) {
                    std::cmp::Ordering::Greater => l[i * n + j] = self.lu[i * n + j],
                    std::cmp::Ordering::Equal => {
                        l[i * n + j] = 1.0;
                        u[i * n + j] = self.lu[i * n + j];
                    }
                    std::cmp::Ordering::Less => u[i * n + j] = self.lu[i * n + j],
                }
            }
        }
        (p, l, u)
    }
}

/// A random rotation: the Q of a QR decomposition of a Gaussian matrix (Gram–Schmidt, with
/// R's diagonal made positive so that Q is Haar-distributed).
pub fn random_rotation(n: usize, rng: &mut crate::rng::Rng) -> Vec<f64> {
    let mut q = vec![0.0; n * n]; // columns stored as rows of `cols`
    let mut cols: Vec<Vec<f64>> = Vec::with_capacity(n);
    while cols.len() < n {
        let mut v: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        for c in &cols {
            let d: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(c).for_each(|(a, b)| *a -= d * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            cols.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    for (j, c) in cols.iter().enumerate() {
        for i in 0..n {
            q[i * n + j] = c[i];
        }
    }
    q
}

#[cfg(test)]
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                c[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    c
}

pub fn transpose(a: &[f64], n: usize) -> Vec<f64> {
    (0..n * n).map(|idx| a[(idx % n) * n + idx / n]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn lu_reconstructs_inverts_and_gives_the_determinant() {
        let a = [0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 4.0];
        let lu = Lu::new(&a, 3);
        // det by cofactor expansion: 0*(4) - 2*(4-0) + 1*(0-3) = -11
        assert!((lu.log_abs_det() - 11f64.ln()).abs() < 1e-12);
        let (p, l, u) = lu.factors();
        let back = matmul(&matmul(&p, &l, 3), &u, 3);
        back.iter()
            .zip(&a)
            .for_each(|(x, y)| assert!((x - y).abs() < 1e-12));
        let eye = matmul(&a, &lu.inverse(), 3);
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((eye[i * 3 + j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn random_rotation_is_orthogonal() {
        let q = random_rotation(6, &mut Rng::new(3));
        let qtq = matmul(&transpose(&q, 6), &q, 6);
        for i in 0..6 {
            for j in 0..6 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((qtq[i * 6 + j] - want).abs() < 1e-12);
            }
        }
        assert!(Lu::new(&q, 6).log_abs_det().abs() < 1e-12);
    }
}
