//! Channel sorting (DESIGN §4): before width shrinking, reorder each
//! block's middle channels by importance so that narrow subnets keep the
//! most important ones.
//!
//! Works on named tensors ([`TensorMap`]) so that the same permutation can be
//! applied to the weights and to optimizer state shaped like them.

use super::OfaBackend;
use super::keys::{self, BIAS, BN_LEAVES, Key, Naming, WEIGHT};
use super::state::{HostTensor, TensorMap};
use super::supernet::Supernet;
use crate::space::Space;

/// The reordering of one elastic block: `mid[i]` is the old index of new
/// middle channel `i`; `se` likewise for the squeeze-excite hidden units.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockPermutation {
    pub block: usize,
    pub mid: Vec<usize>,
    pub se: Option<Vec<usize>>,
}

/// The supernet's names of elastic block `b`'s layers.
struct BlockKeys {
    expand: Key,
    depth: Key,
    project: Key,
    se_reduce: Key,
    se_expand: Key,
}

impl BlockKeys {
    fn of(b: usize) -> Self {
        let block = keys::block(b + 1);
        BlockKeys {
            expand: keys::inverted_bottleneck(&block),
            depth: keys::depth_conv(&block),
            project: keys::point_linear(&block),
            se_reduce: keys::se_reduce(&block),
            se_expand: keys::se_expand(&block),
        }
    }
}

fn conv_weight(layer: &Key) -> String {
    keys::conv(layer, Naming::Dynamic).pp(WEIGHT).into()
}

/// Indices sorted by descending value; ties keep their order.
fn argsort_desc(v: &[f32]) -> Vec<usize> {
    argsort_desc_grouped(&vec![0; v.len()], v)
}

/// Indices sorted by descending (group, value); ties keep their order.
fn argsort_desc_grouped(group: &[i64], v: &[f32]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| group[b].cmp(&group[a]).then(v[b].total_cmp(&v[a])));
    idx
}

/// Sum of |w| over every axis but `axis`.
fn l1_per_index(t: &HostTensor, axis: usize) -> Vec<f32> {
    let n = t.shape[axis];
    let inner: usize = t.shape[axis + 1..].iter().product();
    let mut out = vec![0f32; n];
    for (i, x) in t.data.iter().enumerate() {
        out[(i / inner) % n] += x.abs();
    }
    out
}

/// Importance = L1 norm of the project conv's weights per input channel.
///
/// With `expand_stage > 0` (the reference's `expand_ratio_stage`), channels
/// already inside the widths of the larger expand ratios keep their group:
/// sorting happens within groups, so subnets trained in an earlier
/// expand phase keep their channels.
pub fn channel_permutations(
    map: &TensorMap,
    space: &Space,
    expand_stage: usize,
) -> Vec<BlockPermutation> {
    space
        .blocks()
        .iter()
        .map(|b| {
            let k = BlockKeys::of(b.index);
            let pl = &map[&conv_weight(&k.project)];
            let importance = l1_per_index(pl, 1);
            // The group of each channel: 0 for the narrowest kept width,
            // more negative for the rings beyond it. The reference adds
            // −k·1e5 to the f32 importances instead (`re_organize_middle_weights`
            // in OFA's dynamic_layers.py); in f32 that rounds them to 1/128
            // and lets rounding noise reorder a group. Sorting by (group,
            // importance) is the order it intends, exactly.
            let mut group = vec![0i64; importance.len()];
            if expand_stage > 0 {
                let mut widths: Vec<usize> = space
                    .expand_choices
                    .iter()
                    .rev()
                    .map(|&e| space.middle_width(b.in_ch, e))
                    .collect();
                widths.dedup();
                let mut right = importance.len();
                let mut base = -(widths.len() as i64);
                for &left in widths.iter().take(expand_stage + 1) {
                    for g in &mut group[left.min(right)..right] {
                        *g += base;
                    }
                    base += 1;
                    right = left;
                }
            }
            let mid = argsort_desc_grouped(&group, &importance);
            let se = map
                .get(k.se_expand.pp(WEIGHT).as_str())
                .map(|w| argsort_desc(&l1_per_index(w, 1)));
            BlockPermutation {
                block: b.index,
                mid,
                se,
            }
        })
        .collect()
}

/// Applies block permutations to every tensor of `map` that they touch:
/// expand conv outputs and BN, depthwise weights and BN, SE (both ends and
/// its hidden units) and the project conv's inputs. Keys absent from the map
/// are skipped, so optimizer state holding only some tensors works too.
pub fn apply_permutations(map: &mut TensorMap, perms: &[BlockPermutation]) {
    let mut permute = |k: String, axis: usize, perm: &[usize]| {
        if let Some(t) = map.get_mut(&k) {
            *t = t.select(axis, perm);
        }
    };
    for p in perms {
        let k = BlockKeys::of(p.block);
        for leaf in BN_LEAVES {
            for layer in [&k.expand, &k.depth] {
                permute(keys::bn(layer, Naming::Dynamic).pp(leaf).into(), 0, &p.mid);
            }
        }
        permute(conv_weight(&k.expand), 0, &p.mid);
        permute(conv_weight(&k.depth), 0, &p.mid);
        permute(conv_weight(&k.project), 1, &p.mid);
        permute(k.se_expand.pp(WEIGHT).into(), 0, &p.mid);
        permute(k.se_expand.pp(BIAS).into(), 0, &p.mid);
        permute(k.se_reduce.pp(WEIGHT).into(), 1, &p.mid);
        if let Some(se) = &p.se {
            permute(k.se_expand.pp(WEIGHT).into(), 1, se);
            permute(k.se_reduce.pp(WEIGHT).into(), 0, se);
            permute(k.se_reduce.pp(BIAS).into(), 0, se);
        }
    }
}

impl<B: OfaBackend> Supernet<B> {
    /// Sorts every block's middle channels (see [`channel_permutations`]);
    /// returns the permutations so that optimizer state can follow.
    pub fn sort_channels(self, expand_stage: usize) -> (Self, Vec<BlockPermutation>) {
        let mut map = self.to_tensor_map();
        let perms = channel_permutations(&map, &self.space, expand_stage);
        apply_permutations(&mut map, &perms);
        let net = self
            .load_tensor_map(&map)
            .expect("a permuted map has the network's own keys and shapes");
        (net, perms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_reorders_an_axis() {
        let t = HostTensor {
            shape: vec![2, 3],
            data: vec![0., 1., 2., 10., 11., 12.],
        };
        assert_eq!(
            t.select(1, &[2, 0, 1]).data,
            vec![2., 0., 1., 12., 10., 11.]
        );
        assert_eq!(t.select(0, &[1, 0]).data, vec![10., 11., 12., 0., 1., 2.]);
    }

    #[test]
    fn l1_and_argsort() {
        let t = HostTensor {
            shape: vec![2, 3, 1, 1],
            data: vec![1., -5., 0., 1., 1., -3.],
        };
        assert_eq!(l1_per_index(&t, 1), vec![2., 6., 3.]);
        assert_eq!(argsort_desc(&[2., 6., 3.]), vec![1, 2, 0]);
        // Groups first, then importance; values far apart in size keep
        // their order inside a group (no rounding through an offset).
        assert_eq!(
            argsort_desc_grouped(&[-1, 0, -1, 0], &[1.000_001, 9.0, 1.0, 3.0]),
            vec![1, 3, 0, 2]
        );
    }
}
