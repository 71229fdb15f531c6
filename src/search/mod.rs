//! Specialisation (DESIGN §6): the accuracy table, the accuracy predictor,
//! efficiency models (FLOPs, params, a per-device latency lookup table),
//! the evolutionary search over deployment scenarios, and Pareto fronts.

pub mod efficiency;
pub mod evolution;
pub mod latency;
pub mod measure;
pub mod pareto;
pub mod plot;
pub mod predictor;
pub mod report;
pub mod scenario;
pub mod table;

pub use evolution::{
    Candidate, Constraint, Efficiency, EvoConfig, Measured, Metric, SearchResult, evolve,
    pareto_front,
};
pub use latency::{FastCost, LatencyTable, LutValidation, ProfileConfig, Timing};
pub use measure::{Measurer, measure_baselines, rerank};
pub use predictor::{Encoding, FitConfig, Mlp, Predictor, PredictorReport, Scheme, fit};
pub use scenario::{Scenario, load_scenarios, search_all, search_each, slug, sweep};
pub use table::{Table, TableMeta, TableRow};
