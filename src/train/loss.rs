//! Losses of DESIGN §5: label-smoothed cross-entropy and the soft
//! cross-entropy used for knowledge distillation.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor, backend::Backend};

/// Cross-entropy against soft targets, averaged over the batch:
/// `mean_i Σ_k −target[i,k] · log_softmax(logits)[i,k]`.
pub fn soft_cross_entropy<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    (target * log_softmax(logits, 1)).sum_dim(1).mean().neg()
}

/// Cross-entropy with label smoothing ε: the target is
/// `(1 − ε) · one_hot + ε / K`.
pub fn smoothed_cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    smoothing: f64,
) -> Tensor<B, 1> {
    let k = logits.dims()[1];
    let target = labels.one_hot::<2>(k).float() * (1.0 - smoothing) + smoothing / k as f64;
    soft_cross_entropy(logits, target)
}

/// Soft labels of a teacher: `softmax(logits)`, detached.
pub fn soft_labels<B: Backend>(teacher_logits: Tensor<B, 2>) -> Tensor<B, 2> {
    softmax(teacher_logits.detach(), 1)
}

/// OFA's subnet loss (`progressive_shrinking.py`):
/// `CE_ε(labels) + kd_ratio · softCE(softmax(teacher))`.
pub fn ce_plus_kd<B: Backend>(
    logits: Tensor<B, 2>,
    labels: Tensor<B, 1, Int>,
    teacher_logits: Option<&Tensor<B, 2>>,
    smoothing: f64,
    kd_ratio: f64,
) -> Tensor<B, 1> {
    let ce = smoothed_cross_entropy(logits.clone(), labels, smoothing);
    match teacher_logits {
        Some(t) if kd_ratio > 0.0 => {
            ce + soft_cross_entropy(logits, soft_labels(t.clone())) * kd_ratio
        }
        _ => ce,
    }
}

/// In-place distillation on the KD term alone, as DepS
/// (`--inplace_distillation`, `training/deps.py`) and BigNAS
/// (`training/bignas.py`) train the non-max subnets:
/// `T² · mean_i Σ_k −softmax(t/T)[i,k] · log_softmax(s/T)[i,k]`.
pub fn kd_only<B: Backend>(
    logits: Tensor<B, 2>,
    teacher_logits: &Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 1> {
    let t = temperature;
    let target = soft_labels(teacher_logits.clone() / t);
    soft_cross_entropy(logits / t, target) * (t * t)
}

/// Reads a (summed) loss back from the device and checks it is finite.
pub(crate) fn read_loss<B: Backend>(
    t: Tensor<B, 1>,
    what: impl FnOnce() -> String,
) -> anyhow::Result<f64> {
    let v = t
        .into_data()
        .convert::<f64>()
        .into_vec::<f64>()
        .expect("scalar")[0];
    if !v.is_finite() {
        anyhow::bail!("loss is {v} for {}", what());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    type B = burn::backend::Flex;

    fn t2(v: Vec<f32>, n: usize, k: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, [n, k]), &Default::default())
    }

    fn value(t: Tensor<B, 1>) -> f64 {
        t.into_data().convert::<f64>().into_vec::<f64>().unwrap()[0]
    }

    /// log-softmax by hand, in f64.
    fn log_softmax_row(r: &[f64]) -> Vec<f64> {
        let m = r.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = r.iter().map(|x| (x - m).exp()).sum();
        r.iter().map(|x| x - m - z.ln()).collect()
    }

    #[test]
    fn smoothed_ce_matches_hand_computation() {
        let logits = vec![2.0, -1.0, 0.5, 0.1, 0.3, -0.2];
        let labels = [0i64, 2];
        let eps = 0.1;
        let mut want = 0.0;
        for (i, &y) in labels.iter().enumerate() {
            let row: Vec<f64> = logits[i * 3..i * 3 + 3].iter().map(|&x| x as f64).collect();
            let lp = log_softmax_row(&row);
            for (k, l) in lp.iter().enumerate() {
                let t = if k as i64 == y {
                    1.0 - eps + eps / 3.0
                } else {
                    eps / 3.0
                };
                want -= t * l;
            }
        }
        want /= 2.0;
        let lab = Tensor::<B, 1, Int>::from_data(
            TensorData::new(labels.to_vec(), [2]),
            &Default::default(),
        );
        let got = value(smoothed_cross_entropy(
            t2(logits.clone(), 2, 3),
            lab.clone(),
            eps,
        ));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // ε = 0 is the plain cross-entropy: −log p(y).
        let plain = value(smoothed_cross_entropy(t2(logits.clone(), 2, 3), lab, 0.0));
        let lp0 = log_softmax_row(&[2.0, -1.0, 0.5]);
        let lp1 = log_softmax_row(&[0.1, 0.3, -0.2]);
        assert!((plain - (-(lp0[0] + lp1[2]) / 2.0)).abs() < 1e-5);
    }

    #[test]
    fn kd_soft_ce_matches_hand_computation() {
        let student = vec![1.0, 0.0, -1.0, 0.2, 0.2, 0.4];
        let teacher = vec![0.5, 0.5, 0.0, -2.0, 1.0, 0.0];
        let mut want = 0.0;
        for i in 0..2 {
            let s: Vec<f64> = student[i * 3..i * 3 + 3]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let t: Vec<f64> = teacher[i * 3..i * 3 + 3]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let p: Vec<f64> = log_softmax_row(&t).iter().map(|l| l.exp()).collect();
            let ls = log_softmax_row(&s);
            want -= p.iter().zip(&ls).map(|(a, b)| a * b).sum::<f64>();
        }
        want /= 2.0;
        let got = value(soft_cross_entropy(
            t2(student, 2, 3),
            soft_labels(t2(teacher, 2, 3)),
        ));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn kd_only_matches_hand_computation_with_temperature() {
        // 2 rows × 3 classes, T = 2: T² · mean_i Σ_k −p_t(k) log p_s(k),
        // both softmaxes taken of logits / T.
        let student = [0.3f64, -1.2, 2.0, 1.0, 1.0, -0.5];
        let teacher = [2.0f64, 0.0, -2.0, -1.0, 0.5, 3.0];
        let t = 2.0;
        let mut want = 0.0;
        for i in 0..2 {
            let s: Vec<f64> = student[i * 3..i * 3 + 3].iter().map(|x| x / t).collect();
            let q: Vec<f64> = teacher[i * 3..i * 3 + 3].iter().map(|x| x / t).collect();
            let pt: Vec<f64> = log_softmax_row(&q).iter().map(|l| l.exp()).collect();
            let ls = log_softmax_row(&s);
            want -= pt.iter().zip(&ls).map(|(a, b)| a * b).sum::<f64>();
        }
        want = want / 2.0 * t * t;
        let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        let got = value(kd_only(t2(f(&student), 2, 3), &t2(f(&teacher), 2, 3), t));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // At T = 1 it is the plain soft cross-entropy to the teacher's softmax.
        let plain = value(kd_only(t2(f(&student), 2, 3), &t2(f(&teacher), 2, 3), 1.0));
        let soft = value(soft_cross_entropy(
            t2(f(&student), 2, 3),
            soft_labels(t2(f(&teacher), 2, 3)),
        ));
        assert!((plain - soft).abs() < 1e-6);
    }
}
