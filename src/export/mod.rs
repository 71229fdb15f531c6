//! Shipping subnets (DESIGN §6): standalone subnet folders (safetensors +
//! JSON architecture), ONNX export checked by an independent runtime,
//! import of the public OFA PyTorch checkpoints, and `.npy` batches for
//! `ofa predict`.

pub mod npy;
pub mod onnx;
pub mod pytorch;
pub mod specialized;

pub use crate::nn::{load_subnet, save_subnet};
