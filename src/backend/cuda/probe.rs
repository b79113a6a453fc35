//! Whether a CUDA driver and device are usable, and the copy bandwidths the
//! benchmarks compare against.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaStream;

use super::device::{cuda_err, Gpu};
use crate::error::{Error, Result};

/// Whether the CUDA driver library can be loaded at all. cudarc panics on
/// the first driver call when it cannot, so check this first.
fn driver_present() -> bool {
    // SAFETY: tries to dlopen libcuda under its usual names; loads nothing
    // else and calls no driver function.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether a CUDA driver and at least one device are present and usable:
/// device 0 opens *with the kernels loaded*. A context alone is not enough:
/// a driver older than the toolkit that built the image, or a GPU the
/// image has no code for, creates contexts fine and fails only at the
/// module load, and `auto` must fall back to the CPU there too.
pub fn cuda_available() -> bool {
    cuda_probe().is_ok()
}

/// As [`cuda_available`], with the reason when not: what `auto` logs on
/// falling back to the CPU.
pub fn cuda_probe() -> Result<()> {
    open(0).map(drop)
}

/// Open device `device` with the kernels loaded, or say clearly why not
/// (an error of kind Config, never a panic).
pub fn open(device: usize) -> Result<Gpu> {
    if !driver_present() {
        return Err(Error::config(
            "CUDA requested but no driver/device: the NVIDIA driver library (libcuda.so.1) \
             was not found; install the driver (on a Jetson it comes with JetPack/L4T), or \
             use [device] backend = \"cpu\"",
        ));
    }
    Gpu::new(device)
}

/// A copy bandwidth measured with CUDA events: device-to-device (the bound
/// a memory-bound decode step is read against) or pinned host-to-device
/// (the bound for streaming layers into the device double buffer).
#[derive(Debug, Clone, Copy)]
pub struct CopyBandwidth {
    /// Bytes of each copy.
    pub copy_bytes: usize,
    pub copies: usize,
    pub seconds: f64,
    /// Memory traffic per second. A device-to-device copy reads and writes
    /// every byte on the device, so it counts `2 * copy_bytes` per copy; a
    /// host-to-device copy counts `copy_bytes`.
    pub bytes_per_s: f64,
}

pub type D2dBandwidth = CopyBandwidth;
pub type H2dBandwidth = CopyBandwidth;

/// Time `copies` calls of `copy` on the stream with events, after one
/// untimed warm-up call. Falls back on the wall clock if events say 0.
fn time_copies(
    gpu: &Gpu,
    copies: usize,
    mut copy: impl FnMut(&Arc<CudaStream>, &'static str) -> Result<()>,
) -> Result<f64> {
    let stream = gpu.stream();
    let ctx = gpu.context();
    copy(stream, "warm-up copy")?;
    // Blocking events: `elapsed_ms` waits for them, and that wait sleeps
    // rather than spins (see `set_blocking_sync` in device.rs).
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(cuda_err("create event"))
    };
    let (start, end) = (event()?, event()?);
    let wall = Instant::now();
    start.record(stream).map_err(cuda_err("record event"))?;
    for _ in 0..copies {
        copy(stream, "timed copy")?;
    }
    end.record(stream).map_err(cuda_err("record event"))?;
    let ms = start.elapsed_ms(&end).map_err(cuda_err("event time"))?;
    let seconds = if ms > 0.0 {
        f64::from(ms) / 1e3
    } else {
        wall.elapsed().as_secs_f64()
    };
    Ok(seconds.max(1e-9))
}

/// Time `copies` device-to-device copies of `copy_bytes`.
pub fn measure_d2d_bandwidth(gpu: &Gpu, copy_bytes: usize, copies: usize) -> Result<D2dBandwidth> {
    let copies = copies.max(1);
    let src = gpu.zeros::<u8>(copy_bytes)?;
    let mut dst = gpu.zeros::<u8>(copy_bytes)?;
    let seconds = time_copies(gpu, copies, |stream, what| {
        stream.memcpy_dtod(&src, &mut dst).map_err(cuda_err(what))
    })?;
    Ok(CopyBandwidth {
        copy_bytes,
        copies,
        seconds,
        bytes_per_s: 2.0 * copy_bytes as f64 * copies as f64 / seconds,
    })
}

/// Time `copies` copies of `copy_bytes` from pinned host memory
/// (`cuMemHostAlloc`, portable, not write-combined) to device memory.
pub fn measure_h2d_bandwidth(gpu: &Gpu, copy_bytes: usize, copies: usize) -> Result<H2dBandwidth> {
    let copies = copies.max(1);
    // SAFETY: the memory is written (zeroed) below before any copy reads it.
    let mut host = unsafe {
        gpu.context().alloc_pinned_with_flags::<u8>(
            copy_bytes.max(1),
            cudarc::driver::sys::CU_MEMHOSTALLOC_PORTABLE,
        )
    }
    .map_err(cuda_err(format_args!("allocate {copy_bytes} pinned bytes")))?;
    host.as_mut_slice()
        .map_err(cuda_err("pinned memory"))?
        .fill(0);
    let mut dst = gpu.zeros::<u8>(copy_bytes)?;
    let seconds = time_copies(gpu, copies, |stream, what| {
        stream.memcpy_htod(&host, &mut dst).map_err(cuda_err(what))
    })?;
    Ok(CopyBandwidth {
        copy_bytes,
        copies,
        seconds,
        bytes_per_s: copy_bytes as f64 * copies as f64 / seconds,
    })
}
