//! Page-locking the host streaming slots (`cuMemHostRegister`), and mapping
//! them into the device's address space for the mapped feed; on an
//! integrated GPU, the same for the source's resident bytes
//! (`WeightCache::map_resident`).
//!
//! The slots belong to the weight source ([`crate::residency::Residency`]),
//! which frees them when it is dropped; the registration must be undone
//! first. So registering yields two halves: a [`HostPin`] guard, which
//! unregisters on drop and goes to the source
//! ([`crate::residency::Residency::hold_until_slots_freed`]), and a
//! [`PinnedSlots`] description the backend keeps, which only reads the
//! guard's liveness flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::CudaContext;

use super::device::Gpu;
use super::slots::{self, HostRegion, MappedRegion};

/// Host page size, from the kernel.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// The registration of the host slots; unregisters them on drop.
pub struct HostPin {
    ctx: Arc<CudaContext>,
    registered: Vec<HostRegion>,
    alive: Arc<AtomicBool>,
}

impl Drop for HostPin {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Release);
        if let Err(e) = self.ctx.bind_to_thread() {
            log::warn!("CUDA: cannot unregister the streaming slots: {e}");
            return;
        }
        // Kernels still queued may read the memory (mapped resident weights
        // are not waited for per layer, and a pass an error cut short may
        // leave launches behind): let them finish before it is unlocked
        // and freed. A blocking wait (see `set_blocking_sync` in device.rs).
        if let Err(e) = self.ctx.synchronize() {
            log::warn!("CUDA: synchronize before unregistering host memory: {e}");
        }
        for r in &self.registered {
            // SAFETY: registered by `pin` below and not yet unregistered;
            // the memory still exists (the source drops this guard before
            // its slots).
            let res = unsafe { sys::cuMemHostUnregister(r.addr as *mut std::ffi::c_void) }.result();
            if let Err(e) = res {
                log::warn!(
                    "CUDA: cuMemHostUnregister({:#x}, {} bytes): {e}",
                    r.addr,
                    r.len
                );
            }
        }
    }
}

/// What the backend knows of the registered slots.
#[derive(Debug, Clone)]
pub struct PinnedSlots {
    pub regions: Vec<HostRegion>,
    /// Device addresses of the regions (empty unless mapped).
    pub mapped: Vec<MappedRegion>,
    /// Bytes locked (whole pages).
    pub locked_bytes: u64,
    alive: Arc<AtomicBool>,
}

impl PinnedSlots {
    /// Whether the registration still holds (its guard not yet dropped).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Whether `host` lies in a registered region that is still registered.
    pub fn contains(&self, host: &[u8]) -> bool {
        let a = host.as_ptr() as usize;
        self.is_alive()
            && self
                .regions
                .iter()
                .any(|r| a >= r.addr && a + host.len() <= r.addr + r.len)
    }

    /// The device address of `host`, if it lies in a mapped region that is
    /// still registered.
    pub fn device_address(&self, host: &[u8]) -> Option<u64> {
        if !self.is_alive() {
            return None;
        }
        slots::device_address(&self.mapped, host.as_ptr() as usize, host.len())
    }
}

fn attribute(gpu: &Gpu, a: sys::CUdevice_attribute) -> Result<i32, String> {
    gpu.context()
        .attribute(a)
        .map_err(|e| format!("device attribute {a:?}: {e}"))
}

/// Page-lock `regions` (flags PORTABLE, plus DEVICEMAP when `map`) and,
/// when `map`, find their device addresses. On any failure everything
/// registered so far is undone and the reason comes back, for the caller
/// to fall back on pageable copies.
pub fn pin(gpu: &Gpu, regions: &[HostRegion], map: bool) -> Result<(HostPin, PinnedSlots), String> {
    let page = page_size();
    slots::check_regions(regions, page)?;
    if attribute(
        gpu,
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED,
    )? == 0
    {
        return Err(format!(
            "{} does not support cuMemHostRegister",
            gpu.info().name
        ));
    }
    if map
        && attribute(
            gpu,
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY,
        )? == 0
    {
        return Err(format!("{} cannot map host memory", gpu.info().name));
    }
    let ctx = gpu.context().clone();
    ctx.bind_to_thread()
        .map_err(|e| format!("bind context: {e}"))?;
    let alive = Arc::new(AtomicBool::new(true));
    let mut guard = HostPin {
        ctx,
        registered: Vec::with_capacity(regions.len()),
        alive: alive.clone(),
    };
    let mut flags = sys::CU_MEMHOSTREGISTER_PORTABLE;
    if map {
        flags |= sys::CU_MEMHOSTREGISTER_DEVICEMAP;
    }
    for r in regions {
        // SAFETY: the region is memory the source owns for as long as the
        // guard lives (it drops the guard before freeing it).
        unsafe { sys::cuMemHostRegister_v2(r.addr as *mut std::ffi::c_void, r.len, flags) }
            .result()
            .map_err(|e| format!("cuMemHostRegister({:#x}, {} bytes): {e}", r.addr, r.len))?;
        guard.registered.push(*r);
    }
    let mut mapped = Vec::new();
    if map {
        for r in regions {
            let mut device: sys::CUdeviceptr = 0;
            // SAFETY: out-parameter call; the region is registered with
            // DEVICEMAP in this (current) context.
            unsafe {
                sys::cuMemHostGetDevicePointer_v2(&mut device, r.addr as *mut std::ffi::c_void, 0)
            }
            .result()
            .map_err(|e| format!("cuMemHostGetDevicePointer({:#x}): {e}", r.addr))?;
            mapped.push(MappedRegion {
                host: r.addr,
                len: r.len,
                device,
            });
        }
    }
    let pinned = PinnedSlots {
        regions: regions.to_vec(),
        mapped,
        locked_bytes: slots::locked_bytes(regions, page),
        alive,
    };
    Ok((guard, pinned))
}
