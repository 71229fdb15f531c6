//! Built-in search spaces.

use super::{Activation::*, FirstBlockSpec, FirstConvSpec, HeadSpec, Space, StageSpec};

/// Names accepted by [`preset`], in the order `ofa space list` shows them.
pub const PRESET_NAMES: &[&str] = &[
    "ofa-mbv3-w1.0",
    "ofa-mbv3-w1.2",
    "ofa-proxyless-w1.3",
    "mbv3-32",
    "mbv3-28-lite",
    "tiny",
];

/// A built-in space by name.
pub fn preset(name: &str) -> Option<Space> {
    match name {
        "ofa-mbv3-w1.0" => Some(ofa_mbv3("ofa-mbv3-w1.0", 1.0)),
        "ofa-mbv3-w1.2" => Some(ofa_mbv3("ofa-mbv3-w1.2", 1.2)),
        "ofa-proxyless-w1.3" => Some(ofa_proxyless()),
        "mbv3-32" => Some(mbv3_32()),
        "mbv3-28-lite" => Some(mbv3_28_lite()),
        "tiny" => Some(tiny()),
        _ => None,
    }
}

fn stage(width: usize, stride: usize, act: super::Activation, se: bool, depth: usize) -> StageSpec {
    StageSpec {
        width,
        stride,
        act,
        se,
        max_depth: depth,
        elastic_depth: true,
    }
}

/// The OFA MobileNetV3 space (ImageNet, 224 px), DESIGN §3.
fn ofa_mbv3(name: &str, width_mult: f64) -> Space {
    Space {
        name: name.into(),
        in_channels: 3,
        num_classes: 1000,
        width_mult,
        channel_divisor: 8,
        resolutions: (128..=224).step_by(4).collect(),
        kernel_choices: vec![3, 5, 7],
        expand_choices: vec![3, 4, 6],
        depth_choices: vec![2, 3, 4],
        bn_momentum: 0.1,
        bn_eps: 1e-5,
        dropout: 0.1,
        first_conv: FirstConvSpec {
            width: 16,
            kernel: 3,
            stride: 2,
            act: HSwish,
        },
        first_block: FirstBlockSpec {
            width: 16,
            kernel: 3,
            stride: 1,
            act: Relu,
            se: false,
        },
        stages: vec![
            stage(24, 2, Relu, false, 4),
            stage(40, 2, Relu, true, 4),
            stage(80, 2, HSwish, false, 4),
            stage(112, 1, HSwish, true, 4),
            stage(160, 2, HSwish, true, 4),
        ],
        head: HeadSpec {
            pre_pool: Some(960),
            post_pool: Some(1280),
            act: HSwish,
        },
    }
}

/// The OFA ProxylessNAS space (width 1.3): relu6, no SE, BN ε 1e-3, and a
/// last stage of one block whose depth is fixed.
fn ofa_proxyless() -> Space {
    let mut stages = vec![
        stage(24, 2, Relu6, false, 4),
        stage(40, 2, Relu6, false, 4),
        stage(80, 2, Relu6, false, 4),
        stage(96, 1, Relu6, false, 4),
        stage(192, 2, Relu6, false, 4),
        stage(320, 1, Relu6, false, 1),
    ];
    stages[5].elastic_depth = false;
    Space {
        name: "ofa-proxyless-w1.3".into(),
        in_channels: 3,
        num_classes: 1000,
        width_mult: 1.3,
        channel_divisor: 8,
        resolutions: (128..=224).step_by(4).collect(),
        kernel_choices: vec![3, 5, 7],
        expand_choices: vec![3, 4, 6],
        depth_choices: vec![2, 3, 4],
        bn_momentum: 0.1,
        bn_eps: 1e-3,
        dropout: 0.1,
        first_conv: FirstConvSpec {
            width: 32,
            kernel: 3,
            stride: 2,
            act: Relu6,
        },
        first_block: FirstBlockSpec {
            width: 16,
            kernel: 3,
            stride: 1,
            act: Relu6,
            se: false,
        },
        stages,
        head: HeadSpec {
            pre_pool: Some(1280),
            post_pool: None,
            act: Relu6,
        },
    }
}

/// The MobileNetV3 block structure for 28–32 px inputs (Fashion-MNIST,
/// CIFAR): first conv stride 1 and a first stage without down-sampling, so the
/// network down-samples 8× instead of 32×.
fn mbv3_32() -> Space {
    let mut s = ofa_mbv3("mbv3-32", 1.0);
    s.num_classes = 10;
    s.resolutions = vec![24, 28, 32];
    s.first_conv.stride = 1;
    s.stages[0].stride = 1;
    s
}

/// A CPU-friendly space for 28 px grayscale images (Fashion-MNIST) and quick
/// runs: the same elastic structure (k ∈ {3,5,7}, e ∈ {3,4,6},
/// d ∈ {2,3,4}, SE, h-swish) at half width, a stride-2 first conv, and a lighter
/// head.
fn mbv3_28_lite() -> Space {
    let mut s = ofa_mbv3("mbv3-28-lite", 0.5);
    s.in_channels = 1;
    s.num_classes = 10;
    s.resolutions = vec![20, 24, 28];
    s.first_conv.stride = 2;
    s.stages[0].stride = 1;
    s.head.pre_pool = Some(480);
    s.head.post_pool = Some(640);
    s
}

/// A very small space for tests: every elastic mechanism present
/// (k ∈ {3,5,7}, e ∈ {3,4,6}, d ∈ {1,2,3}, SE, residuals, both heads' layers).
fn tiny() -> Space {
    Space {
        name: "tiny".into(),
        in_channels: 3,
        num_classes: 10,
        width_mult: 1.0,
        channel_divisor: 8,
        resolutions: vec![12, 16, 20],
        kernel_choices: vec![3, 5, 7],
        expand_choices: vec![3, 4, 6],
        depth_choices: vec![1, 2, 3],
        bn_momentum: 0.1,
        bn_eps: 1e-5,
        dropout: 0.0,
        first_conv: FirstConvSpec {
            width: 8,
            kernel: 3,
            stride: 1,
            act: HSwish,
        },
        first_block: FirstBlockSpec {
            width: 8,
            kernel: 3,
            stride: 1,
            act: Relu,
            se: false,
        },
        stages: vec![
            stage(16, 2, Relu, false, 3),
            stage(16, 1, HSwish, true, 3),
            stage(24, 2, HSwish, true, 3),
        ],
        head: HeadSpec {
            pre_pool: Some(48),
            post_pool: Some(64),
            act: HSwish,
        },
    }
}
