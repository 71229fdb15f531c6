//! Training the supernet (DESIGN §5): progressive shrinking, DϵpS, sandwich
//! and independent schedules, with distillation, BN recalibration for
//! validation, and exact resume from atomic checkpoints.

pub mod checkpoint;
mod config;
pub mod eval;
pub mod finetune;
mod loss;
mod optim;
pub mod schedule;
pub use schedule::{Item, Kd};
mod trainer;

pub use config::{
    DepsConfig, EvalConfig, PsConfig, PsPhase, SandwichConfig, Schedule, TrainConfig,
    reference_epochs,
};
pub use eval::{EvalData, EvalResult, batch_tensors, evaluate, recalibrate, reference_archs};
pub use loss::{smoothed_cross_entropy, soft_cross_entropy, soft_labels, subnet_loss};
pub use optim::{CosineSchedule, Sgd, SgdConfig};
pub use trainer::{
    EpochMetrics, NoObserver, StepReport, TrainObserver, TrainOutcome, split_indices,
    step_gradients, train,
};
