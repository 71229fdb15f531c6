//! The one table of reference checkpoint names.
//!
//! Every tensor name the crate reads or writes (supernet and subnet files,
//! the PyTorch importer, channel sorting, optimizer state keyed by name) is
//! built here, from the module paths of mit-han-lab/once-for-all
//! (`ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py` for the
//! supernet, `networks/mobilenet_v3.py` for the static network it
//! extracts). A name is a [`Key`] extended one part at a time, the way
//! candle's `VarBuilder::pp` extends a path; the walk over the network that
//! hands those keys to a visitor lives in `state.rs`.

use std::fmt;

/// A dotted tensor path (`blocks.3.conv.depth_conv`), extended with
/// [`Key::pp`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    fn root(name: &str) -> Key {
        Key(name.to_string())
    }

    /// This path with one more part.
    pub fn pp(&self, part: impl fmt::Display) -> Key {
        Key(format!("{}.{part}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.0
    }
}

/// How a layer's convolution and BN are named. The reference's elastic
/// layers wrap a plain module once more (`DynamicConv2d.conv`,
/// `DynamicSeparableConv2d.conv`, `DynamicBatchNorm2d.bn`), so a supernet's
/// elastic block has `inverted_bottleneck.conv.conv.weight` where a static
/// network has `inverted_bottleneck.conv.weight`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Dynamic,
    Static,
}

/// Leaf names of a convolution or linear layer.
pub const WEIGHT: &str = "weight";
pub const BIAS: &str = "bias";
/// Leaf names of a BN layer, in the order the reference's state dict has
/// them (`num_batches_tracked` is read and ignored).
pub const BN_LEAVES: [&str; 4] = ["weight", "bias", "running_mean", "running_var"];

/// The stem convolution layer.
pub fn first_conv() -> Key {
    Key::root("first_conv")
}

/// Block `i` of the reference's `blocks` list; 0 is the fixed first block,
/// elastic block `b` of the space is `b + 1`.
pub fn block(i: usize) -> Key {
    Key::root("blocks").pp(i).pp("conv")
}

/// The 1×1 conv before global pooling: `final_expand_layer` when a
/// post-pool conv follows (MobileNetV3), else `feature_mix_layer`
/// (ProxylessNAS).
pub fn pre_pool(with_post_pool: bool) -> Key {
    Key::root(if with_post_pool {
        "final_expand_layer"
    } else {
        "feature_mix_layer"
    })
}

/// The 1×1 conv after global pooling (MobileNetV3's `feature_mix_layer`).
pub fn post_pool() -> Key {
    Key::root("feature_mix_layer")
}

/// The classifier's linear layer.
pub fn classifier() -> Key {
    Key::root("classifier").pp("linear")
}

/// A block's expansion layer.
pub fn inverted_bottleneck(block: &Key) -> Key {
    block.pp("inverted_bottleneck")
}

/// A block's depthwise layer (conv, BN and squeeze-excite).
pub fn depth_conv(block: &Key) -> Key {
    block.pp("depth_conv")
}

/// A block's projection layer.
pub fn point_linear(block: &Key) -> Key {
    block.pp("point_linear")
}

/// A block's squeeze-excite reduce and expand convolutions.
pub fn se_reduce(block: &Key) -> Key {
    depth_conv(block).pp("se").pp("fc").pp("reduce")
}
pub fn se_expand(block: &Key) -> Key {
    depth_conv(block).pp("se").pp("fc").pp("expand")
}

/// The convolution of a layer; its weight is `conv(..).pp(WEIGHT)`.
pub fn conv(layer: &Key, naming: Naming) -> Key {
    match naming {
        Naming::Dynamic => layer.pp("conv").pp("conv"),
        Naming::Static => layer.pp("conv"),
    }
}

/// The BN of a layer; its tensors are `bn(..).pp(BN_LEAVES[i])`.
pub fn bn(layer: &Key, naming: Naming) -> Key {
    match naming {
        Naming::Dynamic => layer.pp("bn").pp("bn"),
        Naming::Static => layer.pp("bn"),
    }
}

/// The kernel transformation matrix of an elastic depthwise layer that maps
/// the centre of a `from`×`from` kernel to a `to`×`to` one
/// (`DynamicSeparableConv2d`'s `7to5_matrix`).
pub fn kernel_transform(depth_conv: &Key, from: usize, to: usize) -> Key {
    depth_conv.pp("conv").pp(format!("{from}to{to}_matrix"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names copied from the official checkpoint's key list
    /// (../shared/reference/, `ofa_mbv3_d234_e346_k357_w1.0`).
    #[test]
    fn names_match_the_reference_checkpoint() {
        let b = block(5);
        assert_eq!(
            conv(&inverted_bottleneck(&b), Naming::Dynamic)
                .pp(WEIGHT)
                .as_str(),
            "blocks.5.conv.inverted_bottleneck.conv.conv.weight"
        );
        assert_eq!(
            bn(&depth_conv(&b), Naming::Dynamic)
                .pp(BN_LEAVES[2])
                .as_str(),
            "blocks.5.conv.depth_conv.bn.bn.running_mean"
        );
        assert_eq!(
            kernel_transform(&depth_conv(&b), 7, 5).as_str(),
            "blocks.5.conv.depth_conv.conv.7to5_matrix"
        );
        assert_eq!(
            se_expand(&b).pp(BIAS).as_str(),
            "blocks.5.conv.depth_conv.se.fc.expand.bias"
        );
        assert_eq!(
            conv(&depth_conv(&block(0)), Naming::Static)
                .pp(WEIGHT)
                .as_str(),
            "blocks.0.conv.depth_conv.conv.weight"
        );
        assert_eq!(
            bn(&pre_pool(true), Naming::Static).pp(BIAS).as_str(),
            "final_expand_layer.bn.bias"
        );
        assert_eq!(
            conv(&post_pool(), Naming::Static).pp(WEIGHT).as_str(),
            "feature_mix_layer.conv.weight"
        );
        assert_eq!(classifier().pp(WEIGHT).as_str(), "classifier.linear.weight");
    }
}
