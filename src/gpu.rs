//! NVIDIA GPUs through burn's CUDA backend (cargo feature `cuda`): the
//! supernet's operators on the generic path (burn tensor ops, see
//! [`crate::nn::OfaBackend`]), and the devices this machine has.

use crate::nn::OfaBackend;

impl OfaBackend for burn::backend::Cuda {
    fn backend_label() -> String {
        "cuda (burn/cubecl)".into()
    }

    fn device_label(device: &Self::Device) -> String {
        device_name(device.index).unwrap_or_else(|e| format!("cuda:{} ({e})", device.index))
    }
}

/// Runs a driver query; the driver library is loaded on first use, and a
/// machine without it makes the binding panic, which becomes an error.
fn driver<T>(f: impl FnOnce() -> Result<T, String> + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    match r {
        Ok(r) => r,
        Err(_) => Err(
            "the CUDA driver library (libcuda.so) could not be loaded: is the NVIDIA driver installed?"
                .into(),
        ),
    }
}

/// Number of CUDA devices, or why there are none.
pub fn device_count() -> Result<usize, String> {
    driver(|| {
        use cudarc::driver::result;
        result::init().map_err(|e| format!("CUDA driver initialisation failed: {e:?}"))?;
        let n = result::device::get_count().map_err(|e| format!("{e:?}"))?;
        Ok(n.max(0) as usize)
    })
}

/// The name of CUDA device `n` (e.g. "NVIDIA H200").
pub fn device_name(n: usize) -> Result<String, String> {
    driver(move || {
        use cudarc::driver::result;
        result::init().map_err(|e| format!("{e:?}"))?;
        let dev = result::device::get(n as i32).map_err(|e| format!("{e:?}"))?;
        result::device::get_name(dev).map_err(|e| format!("{e:?}"))
    })
}
