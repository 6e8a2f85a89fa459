//! What a set of scores says: its summary (mean, median, quantiles), how well the scores tell
//! two sets apart (AUROC, the fraction of one above the other's 95th percentile), and the
//! typicality test of Nalisnick et al. (2019), which looks at a batch's mean rather than at
//! single inputs, because plain likelihood ranks some out-of-distribution sets as more likely.

use serde::Serialize;

use crate::rng::Rng;

/// Mean, median and quantiles of a set of scores (bits/dim).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub median: f64,
    pub q05: f64,
    pub q25: f64,
    pub q75: f64,
    pub q95: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// The summary of `values` (NaN everywhere for none).
    pub fn of(values: &[f64]) -> Self {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let q = |p| quantile(&sorted, p);
        Summary {
            count: values.len(),
            mean: mean(values),
            median: q(0.5),
            q05: q(0.05),
            q25: q(0.25),
            q75: q(0.75),
            q95: q(0.95),
            min: q(0.0),
            max: q(1.0),
        }
    }

    /// One line for people: `mean 2.215, median 2.180 (5–95 %: 1.71–2.95)`.
    pub fn line(&self) -> String {
        format!(
            "mean {:.4}, median {:.4}, quantiles 5/25/75/95 %: {:.3} / {:.3} / {:.3} / {:.3}",
            self.mean, self.median, self.q05, self.q25, self.q75, self.q95
        )
    }
}

/// The arithmetic mean (NaN for no values).
pub fn mean(values: &[f64]) -> f64 {
    match values.len() {
        0 => f64::NAN,
        n => values.iter().sum::<f64>() / n as f64,
    }
}

/// The `p`-quantile of ascending `sorted` values, interpolating linearly between the two
/// nearest ranks (the definition of R's type 7 and NumPy's default); NaN for no values.
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// The area under the ROC curve of telling `positives` from `negatives` by their score
/// (higher: more likely positive): the probability that a random positive scores above a
/// random negative, ties counted half (the Mann–Whitney U statistic over the number of
/// pairs). NaN when either set is empty.
pub fn auroc(negatives: &[f64], positives: &[f64]) -> f64 {
    if negatives.is_empty() || positives.is_empty() {
        return f64::NAN;
    }
    // Ranks of the pooled scores, ties given their average rank.
    let mut pooled: Vec<(f64, bool)> = negatives
        .iter()
        .map(|&v| (v, false))
        .chain(positives.iter().map(|&v| (v, true)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < pooled.len() {
        let mut j = i;
        while j < pooled.len() && pooled[j].0.total_cmp(&pooled[i].0).is_eq() {
            j += 1;
        }
        // Ranks i+1 ..= j share their mean.
        let rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += rank * pooled[i..j].iter().filter(|p| p.1).count() as f64;
        i = j;
    }
    let (n, m) = (positives.len() as f64, negatives.len() as f64);
    (rank_sum - n * (n + 1.0) / 2.0) / (n * m)
}

/// The fraction of `values` strictly above `threshold`.
pub fn fraction_above(values: &[f64], threshold: f64) -> f64 {
    match values.len() {
        0 => f64::NAN,
        n => values.iter().filter(|&&v| v > threshold).count() as f64 / n as f64,
    }
}

/// The typicality test (Nalisnick, Matsukawa, Teh & Lakshminarayanan 2019): a batch of M
/// inputs is flagged as out of distribution when its mean bits/dim is further than ε from
/// the training set's mean H, with ε the 99th percentile of that distance over bootstrap
/// batches of the reference set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Typicality {
    /// Inputs per batch.
    pub batch: usize,
    /// The training set's mean bits/dim.
    pub train_mean: f64,
    /// The threshold on |batch mean − H|.
    pub epsilon: f64,
    /// Random batches drawn from each set (and for the bootstrap).
    pub draws: usize,
    /// The fraction of the reference set's batches flagged (about 1 % by construction).
    pub reference_flagged: f64,
    /// The fraction of the other set's batches flagged.
    pub other_flagged: f64,
}

/// Random batches drawn per set by [`typicality`].
pub const TYPICALITY_DRAWS: usize = 2000;

/// Runs the typicality test with `batch` inputs per batch: ε from the bootstrap of
/// `reference` (batches drawn with replacement), then the fraction of random batches of
/// each set whose mean lies further than ε from `train_mean`. Seeded: the same numbers for
/// the same scores.
pub fn typicality(
    train_mean: f64,
    reference: &[f64],
    other: &[f64],
    batch: usize,
    seed: u64,
) -> Typicality {
    let mut rng = Rng::new(seed ^ 0x7E1C_A117_0000_0001);
    let batch = batch.max(1);
    let distances = |set: &[f64], rng: &mut Rng| -> Vec<f64> {
        if set.is_empty() {
            return Vec::new();
        }
        (0..TYPICALITY_DRAWS)
            .map(|_| {
                let sum: f64 = (0..batch)
                    .map(|_| set[(rng.next_u64() % set.len() as u64) as usize])
                    .sum();
                (sum / batch as f64 - train_mean).abs()
            })
            .collect()
    };
    let mut bootstrap = distances(reference, &mut rng);
    bootstrap.sort_by(f64::total_cmp);
    let epsilon = quantile(&bootstrap, 0.99);
    let flagged = |d: Vec<f64>| fraction_above(&d, epsilon);
    let reference_flagged = flagged(distances(reference, &mut rng));
    let other_flagged = flagged(distances(other, &mut rng));
    Typicality {
        batch,
        train_mean,
        epsilon,
        draws: TYPICALITY_DRAWS,
        reference_flagged,
        other_flagged,
    }
}

/// How a second set's scores compare with the first's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    /// AUROC of telling the other set from the first by bits/dim (other = positive).
    pub auroc: f64,
    /// The fraction of the other set above the first set's 95th percentile of bits/dim.
    pub above_q95: f64,
    pub typicality: Typicality,
}

impl Comparison {
    /// Compares `other` with `first` (bits/dim each), with the training set's mean `train_mean`
    /// for the typicality test on batches of `batch`.
    pub fn of(first: &[f64], other: &[f64], train_mean: f64, batch: usize, seed: u64) -> Self {
        Comparison {
            auroc: auroc(first, other),
            above_q95: fraction_above(other, Summary::of(first).q95),
            typicality: typicality(train_mean, first, other, batch, seed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AUROC by counting every pair.
    fn pairs(neg: &[f64], pos: &[f64]) -> f64 {
        let mut wins = 0.0;
        for p in pos {
            for n in neg {
                wins += if p > n {
                    1.0
                } else if p == n {
                    0.5
                } else {
                    0.0
                };
            }
        }
        wins / (pos.len() * neg.len()) as f64
    }

    #[test]
    fn auroc_equals_the_pair_count_with_ties_counted_half() {
        let mut rng = Rng::new(3);
        for trial in 0..50 {
            let (n, m) = (1 + trial % 7, 1 + trial % 11);
            // Few distinct values, so that ties within and across sets are common.
            let mut draw = |k: usize, shift: u64| -> Vec<f64> {
                (0..k)
                    .map(|_| ((rng.next_u64() % 6) + shift) as f64 / 2.0)
                    .collect()
            };
            let (neg, pos) = (draw(n, 0), draw(m, trial as u64 % 3));
            let (a, b) = (auroc(&neg, &pos), pairs(&neg, &pos));
            assert!((a - b).abs() < 1e-12, "{neg:?} {pos:?}: {a} vs {b}");
        }
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 0.0);
        assert_eq!(auroc(&[1.0], &[1.0]), 0.5);
        assert!(auroc(&[], &[1.0]).is_nan());
    }

    #[test]
    fn quantiles_interpolate_between_ranks() {
        let sorted = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&sorted, 0.5), 3.0);
        assert_eq!(quantile(&sorted, 0.25), 2.0);
        assert!((quantile(&sorted, 0.95) - 4.8).abs() < 1e-12);
        assert_eq!(quantile(&sorted, 0.0), 1.0);
        assert_eq!(quantile(&[7.0], 0.3), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
        // Unsorted input to the summary; NumPy: percentile([..], [5, 25, 50, 75, 95]).
        let s = Summary::of(&[10.0, 1.0, 4.0, 3.0, 2.0, 7.0]);
        assert_eq!((s.count, s.min, s.max), (6, 1.0, 10.0));
        assert_eq!((s.mean, s.median), (4.5, 3.5));
        assert!((s.q05 - 1.25).abs() < 1e-12 && (s.q25 - 2.25).abs() < 1e-12);
        assert!((s.q75 - 6.25).abs() < 1e-12 && (s.q95 - 9.25).abs() < 1e-12);
        assert!(s.line().contains("median 3.5000"), "{}", s.line());
        assert_eq!(fraction_above(&[1.0, 2.0, 3.0, 4.0], 2.0), 0.5);
    }

    #[test]
    fn typicality_flags_a_shifted_set_and_about_one_percent_of_the_reference() {
        let mut rng = Rng::new(11);
        let normal = |rng: &mut Rng, n: usize, mu: f64| -> Vec<f64> {
            (0..n).map(|_| mu + 0.3 * rng.normal()).collect()
        };
        let train = normal(&mut rng, 4000, 2.0);
        let reference = normal(&mut rng, 1000, 2.0);
        let h = mean(&train);
        // A set drawn like the reference passes; one shifted by 0.4 bits/dim is flagged.
        let same = normal(&mut rng, 1000, 2.0);
        let shifted = normal(&mut rng, 1000, 2.4);
        let t = typicality(h, &reference, &shifted, 16, 0);
        assert!(t.other_flagged > 0.95, "{t:?}");
        assert!(t.reference_flagged < 0.03, "{t:?}");
        // ε: the 99th percentile of |mean of 16 − H| ≈ 2.58 · 0.3/4 ≈ 0.19.
        assert!((t.epsilon - 0.19).abs() < 0.04, "{t:?}");
        let t = typicality(h, &reference, &same, 16, 0);
        assert!(t.other_flagged < 0.05, "{t:?}");
        // A set that is *more* likely on average (lower bits/dim) is flagged too: the test is
        // two-sided, which is its point.
        let likelier = normal(&mut rng, 1000, 1.6);
        let t = typicality(h, &reference, &likelier, 16, 0);
        assert!(t.other_flagged > 0.95, "{t:?}");
        assert_eq!(typicality(h, &reference, &likelier, 16, 0), t, "seeded");
        // Larger batches: a smaller ε.
        assert!(typicality(h, &reference, &same, 64, 0).epsilon < t.epsilon);
    }

    #[test]
    fn a_comparison_puts_its_numbers_together() {
        let first: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let other: Vec<f64> = (0..100).map(|i| 0.9 + i as f64 / 100.0).collect();
        let c = Comparison::of(&first, &other, 0.5, 4, 1);
        assert!((c.auroc - pairs(&first, &other)).abs() < 1e-12);
        // first's 95th percentile is 0.9405; other values above it: 0.95 … 1.89 → 95 of 100.
        assert!((c.above_q95 - 0.95).abs() < 1e-12, "{c:?}");
        assert_eq!(c.typicality.batch, 4);
    }
}
