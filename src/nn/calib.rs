//! BN recalibration (DESIGN §6): a subnet's running statistics are reset
//! from training images before it is evaluated, because the statistics the
//! supernet accumulated mix many subnets.

use super::OfaBackend;
use super::layers::ElasticBn;
use super::supernet::{MbConv, Supernet};
use super::{BnStats, Mode};
use crate::space::Arch;
use burn::tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("BN recalibration got no images")]
    NoImages,
}

impl<B: OfaBackend> MbConv<B> {
    fn bn_layers(&self) -> Vec<&ElasticBn<B>> {
        let mut v: Vec<&ElasticBn<B>> = self.inverted_bottleneck.iter().map(|ib| &ib.bn).collect();
        v.push(&self.depth_bn);
        v.push(&self.point_linear.bn);
        v
    }
}

impl<B: OfaBackend> Supernet<B> {
    /// Every BN layer of the supernet.
    pub fn bn_layers(&self) -> Vec<&ElasticBn<B>> {
        let mut v: Vec<&ElasticBn<B>> = self.first_conv.bn.iter().collect();
        v.extend(self.first_block.bn_layers());
        for b in &self.blocks {
            v.extend(b.bn_layers());
        }
        v.extend(self.pre_pool.iter().flat_map(|l| l.bn.iter()));
        v
    }
}

/// Resets the running statistics of the BN layers that `arch` uses: each
/// batch's mean and biased variance, averaged weighted by batch size (the
/// reference's `set_running_statistics`). Other channels and inactive
/// layers keep their statistics.
///
/// `batches` yields `[N, C, R, R]` images at the subnet's resolution. Use an
/// inference backend (no autodiff) for speed.
pub fn calibrate_bn<B: OfaBackend, I>(
    net: &Supernet<B>,
    arch: &Arch,
    batches: I,
) -> Result<(), CalibrationError>
where
    I: IntoIterator<Item = Tensor<B, 4>>,
{
    let stats = BnStats::<B>::new();
    let mut seen = 0;
    for x in batches {
        seen += x.dims()[0];
        let _ = net.features(x, arch, Mode::Calibrate(&stats));
    }
    if seen == 0 {
        return Err(CalibrationError::NoImages);
    }
    for bn in net.bn_layers() {
        if let Some((mean, var)) = stats.averaged(bn.gamma.id) {
            bn.set_running(mean, var);
        }
    }
    Ok(())
}
