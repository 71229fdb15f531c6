//! Once-for-All in Rust: train one elastic supernet, then specialize
//! sub-networks for many devices and budgets without retraining.
//!
//! Modules follow the pipeline, and data flows one way:
//! [`space`] → [`nn`] → [`train`] → [`search`] → [`export`] → [`pipeline`]
//! (the whole chain, `ofa run`) → [`cli`]. [`dist`] (collective
//! communication between the processes of a data-parallel job) is a leaf
//! that [`nn`] and [`train`] use.

pub mod cli;
pub mod data;
pub mod dist;
pub mod export;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod nn;
pub mod pipeline;
pub mod search;
pub mod space;
pub mod specialize;
pub mod train;
pub mod util;
