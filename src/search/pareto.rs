//! Pareto fronts, and the random population plotted behind them.

use crate::space::{Arch, Space};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Indices of the points on the Pareto front: no other point is at least as
/// efficient and strictly more accurate (or vice versa). Sorted by cost.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..points.len()).collect();
    idx.sort_by(|&a, &b| {
        points[a]
            .0
            .total_cmp(&points[b].0)
            .then(points[b].1.total_cmp(&points[a].1))
    });
    let mut front = Vec::new();
    let mut best = f64::NEG_INFINITY;
    for i in idx {
        if points[i].1 > best {
            best = points[i].1;
            front.push(i);
        }
    }
    front
}

/// A sample of the space for the background of a Pareto plot.
pub fn random_population(space: &Space, n: usize, seed: u64) -> Vec<Arch> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| Arch::sample(space, &mut rng)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front_of_known_points() {
        let pts = [(1.0, 0.5), (2.0, 0.4), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9)];
        assert_eq!(pareto_front(&pts), vec![0, 2, 4]);
    }
}
