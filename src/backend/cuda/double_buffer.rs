//! The device double buffer for streamed layers (the device feed).
//!
//! Two device slots, allocated once. For each streamed layer:
//! 1. the copy stream waits for the "read done" event of the slot it is
//!    about to fill (recorded behind the kernels of the last layer that read
//!    the slot), then copies the layer from the host slot into it
//!    (`cuMemcpyHtoDAsync`) and records the slot's "copied" event;
//! 2. the compute stream waits for "copied" before the layer's kernels;
//! 3. after the kernels are enqueued, "read done" is recorded behind them,
//!    and the host waits for "copied" (not for the kernels), because the
//!    host slot goes back to the loader when `layer()` returns.
//!
//! So the kernels of layer i run while layer i+1 is read from disk and
//! copied into the other slot. Which slot and which event: [`SlotRotation`].
//!
//! The host waits (step 3, and the copy timing when profiling) are on
//! events made with `CU_EVENT_BLOCKING_SYNC`: the thread sleeps until the
//! copy is done instead of spinning on a core for the length of a layer's
//! copy, which on a Jetson is a core the loader and the board need (see
//! `set_blocking_sync` in `device.rs`). Events only streams wait on stay
//! `DISABLE_TIMING`, the cheapest kind.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::sys::{CUdeviceptr, CUevent_flags};
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream};

use super::device::{cuda_err, Gpu};
use super::slots::{LayerTimes, SlotRotation, SLOTS};
use crate::error::Result;

pub struct DeviceSlots {
    slots: Vec<CudaSlice<u8>>,
    bytes: usize,
    copy: Arc<CudaStream>,
    /// Per slot: recorded on the copy stream behind the copy into it.
    copied: Vec<CudaEvent>,
    /// Per slot: recorded on the compute stream behind the kernels that
    /// read it.
    read_done: Vec<CudaEvent>,
    /// Per slot, when profiling: timing events around the copy.
    copy_timing: Option<Vec<[CudaEvent; 2]>>,
    rotation: SlotRotation,
    /// Bytes copied into each slot by the copy in flight.
    copying: [u64; SLOTS],
}

impl DeviceSlots {
    /// Two slots of `bytes` each, a copy stream and the events.
    pub fn new(gpu: &Gpu, bytes: usize, profile: bool) -> Result<DeviceSlots> {
        let ctx = gpu.context();
        // `host_waits`: the host synchronizes on it (blocking, with timing);
        // else only streams wait on it.
        let event = |host_waits: bool| {
            ctx.new_event(Some(if host_waits {
                CUevent_flags::CU_EVENT_BLOCKING_SYNC
            } else {
                CUevent_flags::CU_EVENT_DISABLE_TIMING
            }))
            .map_err(cuda_err("create event"))
        };
        let mut slots = Vec::with_capacity(SLOTS);
        let mut copied = Vec::with_capacity(SLOTS);
        let mut read_done = Vec::with_capacity(SLOTS);
        let mut timing = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            slots.push(gpu.zeros::<u8>(bytes)?);
            copied.push(event(true)?);
            read_done.push(event(false)?);
            timing.push([event(true)?, event(true)?]);
        }
        // The slots were allocated (and zeroed) in the compute stream's
        // order; the copy stream must not write them before that is done.
        gpu.synchronize()?;
        Ok(DeviceSlots {
            slots,
            bytes,
            copy: gpu.new_stream()?,
            copied,
            read_done,
            copy_timing: profile.then_some(timing),
            rotation: SlotRotation::new(),
            copying: [0; SLOTS],
        })
    }

    /// Bytes of each slot.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Device address of slot `slot`.
    pub fn address(&self, slot: usize) -> CUdeviceptr {
        Gpu::address_of(&self.slots[slot])
    }

    /// Start streamed layer `layer`: pick its slot and copy `host` into it
    /// on the copy stream, behind the kernels that last read the slot; the
    /// compute stream waits for the copy. Returns the slot and the outcome;
    /// [`DeviceSlots::finish`] must follow either way, once the layer's
    /// kernels are enqueued (or abandoned).
    pub fn begin(&mut self, gpu: &Gpu, layer: usize, host: &[u8]) -> (usize, Result<()>) {
        let ticket = self.rotation.begin(layer);
        let slot = ticket.slot;
        self.copying[slot] = 0;
        let result = (|| {
            if host.len() > self.bytes {
                return Err(crate::error::Error::config(format!(
                    "CUDA: streamed layer {layer} needs {} bytes but the device slots hold {}",
                    host.len(),
                    self.bytes
                )));
            }
            if ticket.wait_for_layer.is_some() {
                self.copy
                    .wait(&self.read_done[slot])
                    .map_err(cuda_err("copy stream: wait for the slot's readers"))?;
            }
            if let Some(t) = &self.copy_timing {
                t[slot][0]
                    .record(&self.copy)
                    .map_err(cuda_err("record event"))?;
            }
            // SAFETY: slot `slot` is this object's device memory and no
            // kernel reads it until the compute stream has waited for
            // `copied[slot]` (below); copies into it are ordered after the
            // kernels that read it before (the wait above). `host` stays
            // valid and unchanged until `finish` has waited for the copy.
            unsafe { gpu.copy_htod_async(&self.copy, self.address(slot), host)? };
            self.copying[slot] = host.len() as u64;
            if let Some(t) = &self.copy_timing {
                t[slot][1]
                    .record(&self.copy)
                    .map_err(cuda_err("record event"))?;
            }
            self.copied[slot]
                .record(&self.copy)
                .map_err(cuda_err("record event"))?;
            gpu.stream()
                .wait(&self.copied[slot])
                .map_err(cuda_err("compute stream: wait for the copy"))
        })();
        (slot, result)
    }

    /// The layer's kernels reading `slot` are enqueued: record "read done"
    /// behind them, then wait (on the host) for the copy out of the host
    /// slot, so the caller may hand it back. Adds to `times`.
    pub fn finish(&mut self, gpu: &Gpu, slot: usize, times: &mut LayerTimes) -> Result<()> {
        let recorded = self.read_done[slot]
            .record(gpu.stream())
            .map_err(cuda_err("record event"));
        self.rotation.end(slot);
        if let Err(e) = recorded {
            // Without the event a later copy could overwrite the slot under
            // the kernels: wait for them instead.
            let _ = gpu.synchronize();
            let _ = self.copy.synchronize();
            return Err(e);
        }
        let wait = Instant::now();
        // Waits for the copy stream up to this slot's copy only; the
        // compute stream keeps running the layer's kernels. A blocking
        // event: the thread sleeps, it does not spin.
        let synced = self.copied[slot]
            .synchronize()
            .map_err(cuda_err("wait for the copy of a streamed layer"));
        times.host_wait_ms += wait.elapsed().as_secs_f64() * 1e3;
        synced?;
        times.copied_layers += 1;
        times.copy_bytes += self.copying[slot];
        if let Some(t) = &self.copy_timing {
            if self.copying[slot] > 0 {
                let ms = t[slot][0]
                    .elapsed_ms(&t[slot][1])
                    .map_err(cuda_err("event time"))?;
                times.copy_ms += f64::from(ms);
            }
        }
        Ok(())
    }
}

impl Drop for DeviceSlots {
    fn drop(&mut self) {
        // No copy may still target a slot when it is freed.
        let _ = self.copy.synchronize();
    }
}
