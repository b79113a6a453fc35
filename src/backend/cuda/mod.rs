//! The CUDA backend (feature `cuda`): the forward pass of `cpu/forward.rs`
//! on an NVIDIA GPU, with the model's weights, the KV cache and the
//! activations in device memory.
//!
//! Layout of the module (`geometry`, `slots` and `kernel_cache` are pure,
//! compiled and tested with or without the feature; the rest needs it):
//! - `geometry`: launch geometry and kernel names.
//! - `device`: context, stream, the kernel module (the fatbin build.rs made
//!   from `kernels/*.cu`, embedded in the binary, or where the driver cannot
//!   load it, the carried sources compiled by `nvrtc`) and one checked
//!   wrapper per kernel launch.
//! - `kernel_cache`: the kernel sources the binary carries, and the disk
//!   cache of what NVRTC compiles from them; `nvrtc`: the compiling.
//! - `slots`: the plannable half of streaming (layer spans, slot sizes, the
//!   double buffer's rotation, registration math, device memory plan).
//! - `pinned`: page-locking (and, mapped feed, mapping) the host streaming
//!   slots with `cuMemHostRegister`.
//! - `double_buffer`: the device double buffer, its copy stream and events.
//! - `weights`: resident layers uploaded on first use and cached by file
//!   offset up to a budget (staged per pass beyond it); streamed layers
//!   copied through the double buffer or read from mapped host slots.
//! - `forward`: `CudaForward`, the [`crate::backend::Backend`].
//! - `probe`: whether a driver and device are usable; copy bandwidths.
//!
//! `flea::engine::streaming_engine` puts it together with a planned
//! residency (the backend sees only [`crate::backend::HostSlots`]).
//!
//! The driver is loaded at run time (cudarc's dynamic loading), so a binary
//! built with `cuda` still runs on a machine without a GPU or driver:
//! `cuda_available` says whether one is usable, and `open` turns a
//! missing driver or device into an error rather than a panic.

pub mod geometry;
pub mod kernel_cache;
pub mod slots;

#[cfg(feature = "cuda")]
pub mod device;
#[cfg(feature = "cuda")]
pub mod double_buffer;
#[cfg(feature = "cuda")]
pub mod forward;
#[cfg(feature = "cuda")]
pub mod nvrtc;
#[cfg(feature = "cuda")]
pub mod pinned;
#[cfg(feature = "cuda")]
mod probe;
#[cfg(feature = "cuda")]
pub mod weights;

pub use crate::backend::Feed;
pub use slots::{DevicePlan, LayerTimes};

#[cfg(feature = "cuda")]
pub use cudarc;
#[cfg(feature = "cuda")]
pub use device::{
    AttentionShape, DevWeight, DeviceInfo, Format, Gpu, Q8Scratch, QuantInput, FATBIN_ARCHS,
    FATBIN_PTX_ARCH,
};
#[cfg(feature = "cuda")]
pub use forward::{CudaForward, CudaForwardConfig};
#[cfg(feature = "cuda")]
pub use probe::*;
