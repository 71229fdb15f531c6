//! Deterministic choices of which images to use, and in which order.

use super::rng::{mix, shuffle, stream_rng};
use super::{DataError, Split};

/// Splits `0..n` into a validation hold-out of `val_size` indices and the
/// remaining training indices, both sorted.
///
/// The split is a seeded permutation, so the same `(n, val_size, seed)` gives
/// the same hold-out on every machine and in every run; this is what keeps the
/// validation images out of training across restarts.
pub fn holdout(
    n: usize,
    val_size: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DataError> {
    if val_size >= n {
        return Err(DataError::InvalidArgument(format!(
            "a validation hold-out of {val_size} images needs more than {val_size} images, \
             but the split has {n}"
        )));
    }
    let mut order: Vec<usize> = (0..n).collect();
    shuffle(&mut order, &mut stream_rng(seed, 0));
    let mut train = order.split_off(val_size);
    let mut val = order;
    val.sort_unstable();
    train.sort_unstable();
    Ok((val, train))
}

/// Keeps at most `max` of `indices`, chosen by a seeded shuffle, in ascending
/// order. With `max >= indices.len()` all are kept (sorted).
pub fn cap_indices(indices: &[usize], max: usize, seed: u64) -> Vec<usize> {
    let mut kept = indices.to_vec();
    if kept.len() > max {
        shuffle(&mut kept, &mut stream_rng(seed, 0));
        kept.truncate(max);
    }
    kept.sort_unstable();
    kept
}

/// Like [`cap_indices`], but keeps the class proportions of `indices`: every
/// class gets its proportional share of `max` (largest-remainder rounding),
/// so a small `--max-train-images` does not starve a class by bad luck.
///
/// Fails if an index is outside `split`.
pub fn cap_indices_stratified(
    indices: &[usize],
    split: &Split,
    max: usize,
    seed: u64,
) -> Result<Vec<usize>, DataError> {
    let groups = group_by_label(indices, split)?;
    if indices.len() <= max {
        return Ok(cap_indices(indices, max, seed));
    }
    let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
    let quotas = proportional_quotas(&sizes, max);
    let mut kept = Vec::with_capacity(max);
    for (class, (mut group, quota)) in groups.into_iter().zip(quotas).enumerate() {
        // One stream per class: a class's choice does not depend on the others.
        shuffle(&mut group, &mut stream_rng(seed, class as u64));
        kept.extend(group.iter().take(quota));
    }
    kept.sort_unstable();
    Ok(kept)
}

/// The order in which to visit `indices` during `epoch`: a seeded shuffle,
/// different for every epoch, identical for the same `(epoch, seed)`.
pub fn epoch_order(indices: &[usize], epoch: u64, seed: u64) -> Vec<usize> {
    let mut order = indices.to_vec();
    shuffle(&mut order, &mut stream_rng(seed, epoch));
    order
}

/// Derives the seed of one batch from the run seed and its position.
///
/// [`make_batch`](super::make_batch) draws each image's augmentation from
/// `(seed, position in batch)`, so every batch of a run needs its own seed;
/// this gives one that is a pure function of where the batch sits in training.
pub fn batch_seed(seed: u64, epoch: u64, step: u64) -> u64 {
    mix(mix(mix(seed) ^ epoch) ^ step)
}

fn group_by_label(indices: &[usize], split: &Split) -> Result<Vec<Vec<usize>>, DataError> {
    let mut groups = vec![Vec::new(); split.num_classes()];
    for &index in indices {
        let label = split.label(index).ok_or_else(|| {
            DataError::InvalidArgument(format!(
                "index {index} is outside the split of {} images",
                split.len()
            ))
        })?;
        groups[label].push(index);
    }
    Ok(groups)
}

/// Shares `total` among groups proportionally to `sizes` (which sum to more
/// than `total`), rounding by largest remainder with ties to the lower group.
fn proportional_quotas(sizes: &[usize], total: usize) -> Vec<usize> {
    let n: usize = sizes.iter().sum();
    if n == 0 {
        return vec![0; sizes.len()];
    }
    let share = |size: usize| (size as u128 * total as u128, n as u128);
    let mut quotas: Vec<usize> = sizes
        .iter()
        .map(|&size| {
            let (num, den) = share(size);
            (num / den) as usize
        })
        .collect();
    let mut by_remainder: Vec<usize> = (0..sizes.len()).collect();
    // Stable sort keeps lower groups first among equal remainders.
    by_remainder.sort_by_key(|&g| {
        let (num, den) = share(sizes[g]);
        std::cmp::Reverse(num % den)
    });
    let assigned: usize = quotas.iter().sum();
    for &g in by_remainder.iter().take(total - assigned) {
        quotas[g] += 1;
    }
    quotas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_deterministic_disjoint_and_complete() {
        let (val, train) = holdout(1000, 100, 7).expect("valid");
        assert_eq!((val.len(), train.len()), (100, 900));
        assert_eq!(
            holdout(1000, 100, 7).expect("valid"),
            (val.clone(), train.clone())
        );
        assert!(val.windows(2).all(|w| w[0] < w[1]));
        assert!(train.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<usize> = val.iter().chain(&train).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        let (other_val, _) = holdout(1000, 100, 8).expect("valid");
        assert_ne!(other_val, val);
        // Not simply the first or last indices.
        assert_ne!(val, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn outputs_are_pinned() {
        // Recorded values: a change here means resumed runs would see a
        // different hold-out (validation images leaking into training) or a
        // different data order, so it must never happen silently.
        assert_eq!(holdout(20, 3, 0).expect("valid").0, vec![5, 10, 13]);
        assert_eq!(
            epoch_order(&[0, 1, 2, 3, 4, 5, 6, 7], 1, 2),
            vec![3, 7, 6, 5, 2, 1, 4, 0]
        );
        assert_eq!(
            cap_indices(&(0..10).collect::<Vec<_>>(), 3, 5),
            vec![0, 4, 5]
        );
    }

    #[test]
    fn holdout_rejects_too_large_validation() {
        assert!(holdout(10, 10, 0).is_err());
        assert!(holdout(0, 0, 0).is_err());
        let (val, train) = holdout(5, 0, 0).expect("empty hold-out is fine");
        assert!(val.is_empty());
        assert_eq!(train, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn cap_keeps_subset_deterministically() {
        let indices: Vec<usize> = (0..50).map(|i| i * 2).collect();
        let kept = cap_indices(&indices, 10, 3);
        assert_eq!(kept.len(), 10);
        assert_eq!(kept, cap_indices(&indices, 10, 3));
        assert!(kept.iter().all(|i| indices.contains(i)));
        assert_eq!(cap_indices(&indices, 100, 3), indices);
    }

    #[test]
    fn stratified_cap_keeps_proportions() {
        // 60 images of class 0, 30 of class 1, 10 of class 2.
        let labels: Vec<usize> = (0..100)
            .map(|i| match i {
                0..60 => 0,
                60..90 => 1,
                _ => 2,
            })
            .collect();
        let split = Split::in_memory(vec![0; 100], labels, 1, 1, 3).expect("valid");
        let all: Vec<usize> = (0..100).collect();
        let kept = cap_indices_stratified(&all, &split, 10, 1).expect("valid");
        let mut counts = [0; 3];
        for &i in &kept {
            counts[split.label(i).expect("in range")] += 1;
        }
        assert_eq!(counts, [6, 3, 1]);
        assert_eq!(
            kept,
            cap_indices_stratified(&all, &split, 10, 1).expect("valid")
        );
        assert!(cap_indices_stratified(&[100], &split, 1, 0).is_err());
    }

    #[test]
    fn quotas_round_by_largest_remainder() {
        assert_eq!(proportional_quotas(&[1, 1, 1], 2), vec![1, 1, 0]);
        assert_eq!(proportional_quotas(&[5, 3, 2], 5), vec![3, 1, 1]);
        assert_eq!(proportional_quotas(&[10, 10], 0), vec![0, 0]);
    }

    #[test]
    fn epoch_order_varies_by_epoch_only() {
        let indices: Vec<usize> = (0..64).collect();
        let a = epoch_order(&indices, 0, 9);
        assert_eq!(a, epoch_order(&indices, 0, 9));
        assert_ne!(a, epoch_order(&indices, 1, 9));
        assert_ne!(a, epoch_order(&indices, 0, 10));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, indices);
    }

    #[test]
    fn batch_seeds_differ() {
        assert_ne!(batch_seed(1, 0, 0), batch_seed(1, 0, 1));
        assert_ne!(batch_seed(1, 0, 1), batch_seed(1, 1, 0));
        assert_eq!(batch_seed(1, 2, 3), batch_seed(1, 2, 3));
    }
}
