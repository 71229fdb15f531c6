//! Seeded randomness with results that never depend on the platform or on
//! the version of `rand`.
//!
//! `rand`'s own distributions and shuffles have changed their output between
//! releases before; resuming a run or comparing two machines needs the exact
//! same numbers, so we derive integers and floats from raw `next_u64` words
//! ourselves and only rely on ChaCha8's stream, which is specified.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A generator for one purpose (`stream`) under one seed. Different streams of
/// the same seed are independent, which lets every image of a batch (or every
/// epoch) get its own generator without any bookkeeping.
pub(crate) fn stream_rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Uniform integer in `0..bound` (`bound` > 0), without modulo bias
/// (Lemire's multiply-and-reject).
pub(crate) fn below(rng: &mut impl Rng, bound: usize) -> usize {
    debug_assert!(bound > 0);
    let bound = bound as u64;
    // Values of the low word under this threshold would make some results
    // more likely than others; rejecting them is rare for small bounds.
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let product = u128::from(rng.next_u64()) * u128::from(bound);
        if (product as u64) >= threshold {
            return (product >> 64) as usize;
        }
    }
}

/// Uniform float in `[0, 1)` with 53 random bits.
pub(crate) fn unit_f64(rng: &mut impl Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform float in `[low, high)`.
pub(crate) fn uniform(rng: &mut impl Rng, low: f64, high: f64) -> f64 {
    low + (high - low) * unit_f64(rng)
}

/// A fair coin.
pub(crate) fn coin(rng: &mut impl Rng) -> bool {
    rng.next_u64() >> 63 == 1
}

/// Fisher–Yates shuffle in place.
pub(crate) fn shuffle<T>(items: &mut [T], rng: &mut impl Rng) {
    for i in (1..items.len()).rev() {
        let j = below(rng, i + 1);
        items.swap(i, j);
    }
}

/// SplitMix64 finaliser: spreads nearby inputs (seed, seed + 1…) over the
/// whole 64-bit range before they are combined into a new seed.
pub(crate) fn mix(z: u64) -> u64 {
    crate::util::splitmix64(z.wrapping_add(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = stream_rng(1, 0);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            let v = below(&mut rng, 7);
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn unit_is_half_open() {
        let mut rng = stream_rng(2, 0);
        for _ in 0..1000 {
            let v = unit_f64(&mut rng);
            assert!((0.0..1.0).contains(&v));
        }
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| stream_rng(3, 0).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(stream_rng(3, 0).next_u64(), stream_rng(3, 1).next_u64());
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut items: Vec<usize> = (0..100).collect();
        shuffle(&mut items, &mut stream_rng(4, 0));
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
    }
}
