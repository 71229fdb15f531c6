//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::{Tensor, TensorData, backend::Backend};
use ofa::nn::{Supernet, SupernetConfig, TensorMap};
use ofa::space::Space;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub type B = burn::backend::Flex;
pub type AB = burn::backend::Autodiff<burn::backend::Flex>;

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

pub fn random_vec(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

pub fn random_tensor<Bk: Backend, const D: usize>(shape: [usize; D], seed: u64) -> Tensor<Bk, D> {
    let n = shape.iter().product();
    Tensor::from_data(
        TensorData::new(random_vec(n, &mut rng(seed)), shape),
        &Default::default(),
    )
}

/// A supernet whose BN statistics, affine parameters and kernel transforms
/// are random (not the identity/zero/one of a fresh network), so that a
/// wrong slice or a wrong orientation changes the output.
pub fn random_supernet<Bk: ofa::nn::OfaBackend>(space: &Space, seed: u64) -> Supernet<Bk> {
    let net = SupernetConfig::new(space.clone())
        .with_seed(seed)
        .init::<Bk>(&Default::default());
    let mut map: TensorMap = net.to_tensor_map();
    let mut r = rng(seed + 1000);
    for (k, t) in map.iter_mut() {
        let noise = |r: &mut ChaCha8Rng| r.random::<f32>() * 2.0 - 1.0;
        if k.ends_with("running_var") {
            t.data.iter_mut().for_each(|x| *x = 0.5 + r.random::<f32>());
        } else if k.ends_with("running_mean") || (k.contains(".bn.") && k.ends_with(".bias")) {
            t.data.iter_mut().for_each(|x| *x = 0.2 * noise(&mut r));
        } else if k.contains(".bn.") && k.ends_with(".weight") {
            t.data.iter_mut().for_each(|x| *x = 0.5 + r.random::<f32>());
        } else if k.ends_with("_matrix") {
            t.data.iter_mut().for_each(|x| *x += 0.2 * noise(&mut r));
        } else if k.ends_with("se.fc.reduce.bias") || k.ends_with("se.fc.expand.bias") {
            t.data.iter_mut().for_each(|x| *x = 0.5 * noise(&mut r));
        }
    }
    net.load_tensor_map(&map).unwrap()
}

pub fn max_abs_diff<Bk: Backend, const D: usize>(a: Tensor<Bk, D>, b: Tensor<Bk, D>) -> f32 {
    to_vec((a - b).abs().max())[0]
}

pub fn max_abs<Bk: Backend, const D: usize>(a: Tensor<Bk, D>) -> f32 {
    to_vec(a.abs().max())[0]
}

pub fn to_vec<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()
}
