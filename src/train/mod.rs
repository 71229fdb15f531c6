//! Training the supernet (DESIGN §5): progressive shrinking, DϵpS, sandwich
//! and independent schedules, with distillation, BN recalibration for
//! validation, and exact resume from atomic checkpoints.

pub mod checkpoint;
mod config;
pub mod eval;
pub mod finetune;
mod loss;
mod optim;
pub mod parallel;
mod presets;
mod run_data;
pub mod schedule;
pub use schedule::{Item, Kd};
mod trainer;

pub use config::{
    DepsConfig, EpsSchedule, EvalConfig, GradientAggregation, IndependentNet, InplaceLoss,
    PsConfig, PsPhase, SandwichConfig, Schedule, TeacherBn, TrainConfig, reference_epochs,
};
pub use eval::{
    EvalData, EvalResult, batch_tensors, evaluate, evaluate_subnet, evaluate_with_hits,
    paired_stderr, recalibrate, reference_archs,
};
pub use loss::{ce_plus_kd, kd_only, smoothed_cross_entropy, soft_cross_entropy, soft_labels};
pub use optim::{CosineSchedule, Sgd, SgdConfig};
pub use presets::{apply_preset, apply_toml};
pub use run_data::{eval_data_of, load_data_for, run_config_near, run_config_or_default};
pub use trainer::{
    EpochMetrics, NoObserver, StepReport, TrainObserver, TrainOutcome, Trainer, split_indices,
    step_gradients, train,
};
