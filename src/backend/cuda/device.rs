//! The GPU as the forward pass sees it: one context, one stream, the
//! kernel module loaded from the embedded fatbin, and a typed wrapper per
//! kernel launch. Launch geometry comes from [`super::geometry`]; every
//! wrapper checks the lengths of the buffers it hands a kernel, because a
//! kernel trusts its arguments. A failed check is an error naming the
//! launch and the sizes (kind Config), never a panic: the engine's own
//! checks keep its passes inside them, but the wrappers are public.
//!
//! All work goes to one stream, in order, so a launch may read what the one
//! before it wrote; cudarc's per-buffer event tracking is switched off.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView,
    CudaViewMut, DevicePtr, DeviceRepr, DeviceSlice, DriverError, LaunchConfig, PushKernelArg,
    ValidAsZeroBits,
};
use cudarc::nvrtc::Ptx;

use super::geometry::{self, ActQuant, Dims, MatmulPlan, FORMAT_SUFFIXES, MATVEC_MAX_COLS};
use crate::error::{Error, Result};
use crate::model::RopeStyle;
use crate::quant::GgmlType;

/// The kernels, compiled by build.rs from kernels/*.cu.
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flea_kernels.fatbin"));
/// The compute capabilities the fatbin has SASS for (PTX for the lowest).
pub const FATBIN_ARCHS: &str = env!("FLEA_CUDA_ARCHS");
/// The compute capability of the fatbin's PTX (the lowest of the archs).
pub const FATBIN_PTX_ARCH: &str = env!("FLEA_CUDA_PTX_ARCH");
/// The CUDA release of the nvcc that built the kernels ("unknown" if it did
/// not say): the oldest driver that can load them.
pub const NVCC_RELEASE: &str = env!("FLEA_NVCC_RELEASE");

/// A driver error as a library error, naming what was being done.
pub(crate) fn cuda_err(what: impl std::fmt::Display) -> impl FnOnce(DriverError) -> Error {
    move |e| Error::config(format!("CUDA: {what}: {e}"))
}

/// `Ok` if `cond`, else the error `message()` describes: a launch wrapper's
/// check of what it hands a kernel.
fn ensure(cond: bool, message: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::config(format!("CUDA: {}", message())))
    }
}

/// Launch dimensions, or why the hardware cannot take them.
fn dims(d: geometry::GeometryResult<Dims>) -> Result<LaunchConfig> {
    let d = d.map_err(|e| Error::config(format!("CUDA: cannot launch: {e}")))?;
    Ok(LaunchConfig {
        grid_dim: d.grid,
        block_dim: d.block,
        shared_mem_bytes: d.shared_bytes,
    })
}

/// A weight format the kernels are instantiated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub ggml_type: GgmlType,
    /// Index into [`FORMAT_SUFFIXES`] and the kernel tables.
    index: usize,
}

impl Format {
    /// The kernels' format for a ggml type, or an error naming the type.
    pub fn of(ggml_type: GgmlType) -> Result<Format> {
        let name = ggml_type.to_string();
        geometry::format_suffix(&name)
            .and_then(|s| FORMAT_SUFFIXES.iter().position(|x| *x == s))
            .map(|index| Format { ggml_type, index })
            .ok_or_else(|| {
                Error::model(format!(
                    "CUDA backend: no kernels for weight type {name} (supported: {})",
                    FORMAT_SUFFIXES.join(", ")
                ))
            })
    }

    pub fn suffix(self) -> &'static str {
        FORMAT_SUFFIXES[self.index]
    }
}

/// A weight matrix the kernels can read: GGUF bytes as in the file, in
/// device memory or in page-locked host memory mapped into the device's
/// address space (a streaming slot on a unified-memory board). Borrows
/// whatever holds the bytes for `'a`.
#[derive(Debug)]
pub struct DevWeight<'a> {
    pub format: Format,
    pub rows: usize,
    pub cols: usize,
    /// Device address of the first byte. A plain address, never owned: a
    /// mapped host address must not reach `cuMemFree`.
    ptr: sys::CUdeviceptr,
    len: usize,
    _bytes: PhantomData<&'a [u8]>,
}

impl<'a> DevWeight<'a> {
    /// A matrix in device memory.
    pub fn new(format: Format, rows: usize, cols: usize, data: CudaView<'a, u8>) -> DevWeight<'a> {
        // Event tracking is off (see `Gpu::new`): this only reads the address.
        let (ptr, _sync) = data.device_ptr(data.stream());
        DevWeight {
            format,
            rows,
            cols,
            ptr,
            len: data.len(),
            _bytes: PhantomData,
        }
    }

    /// A matrix at a device address.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be readable by kernels of this context for as
    /// long as the weight (and any launch that reads it) lives.
    pub unsafe fn from_raw(
        format: Format,
        rows: usize,
        cols: usize,
        ptr: sys::CUdeviceptr,
        len: usize,
    ) -> DevWeight<'a> {
        DevWeight {
            format,
            rows,
            cols,
            ptr,
            len,
            _bytes: PhantomData,
        }
    }

    /// Bytes of the matrix.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device address of the first byte.
    pub fn device_ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    pub fn row_bytes(&self) -> usize {
        self.len / self.rows
    }

    /// Whether the bytes hold the shape, in whole blocks, aligned as the
    /// kernels read them.
    fn check(&self, what: &str) -> Result<()> {
        let expect = self
            .format
            .ggml_type
            .row_bytes(self.cols)
            .and_then(|b| b.checked_mul(self.rows));
        ensure(expect == Some(self.len) && self.rows > 0, || {
            format!(
                "{what}: {} [{} x {}] needs {:?} bytes, has {}",
                self.format.ggml_type, self.rows, self.cols, expect, self.len
            )
        })?;
        ensure(
            geometry::supports_width(self.format.suffix(), self.cols),
            || {
                format!(
                    "{what}: {} rows of {} weights are not whole blocks",
                    self.format.ggml_type, self.cols
                )
            },
        )?;
        ensure(self.ptr.is_multiple_of(super::slots::WEIGHT_ALIGN), || {
            format!(
                "{what}: weights at {:#x} are not {}-byte aligned",
                self.ptr,
                super::slots::WEIGHT_ALIGN
            )
        })
    }
}

struct Kernels {
    /// `[format][cols - 1]`.
    matvec: Vec<[CudaFunction; MATVEC_MAX_COLS]>,
    /// `[format][cols - 1]` of the integer mat-vec; `None` for floats.
    matvec_q8: Vec<Option<[CudaFunction; MATVEC_MAX_COLS]>>,
    quantize_q8_32: CudaFunction,
    quantize_q8_k: CudaFunction,
    matmul: Vec<CudaFunction>,
    embed: Vec<CudaFunction>,
    rmsnorm: CudaFunction,
    rmsnorm_gather: CudaFunction,
    rmsnorm_heads: CudaFunction,
    rope: CudaFunction,
    kv_store: CudaFunction,
    kv_store_f16: CudaFunction,
    attention: CudaFunction,
    attention_f16: CudaFunction,
    attention_split: CudaFunction,
    attention_split_f16: CudaFunction,
    attention_merge: CudaFunction,
    attention_tiled: CudaFunction,
    attention_tiled_f16: CudaFunction,
    swiglu: CudaFunction,
    add_in_place: CudaFunction,
    add_bias: CudaFunction,
    argmax_rows: CudaFunction,
}

impl Kernels {
    fn load(module: &Arc<CudaModule>) -> Result<Kernels> {
        let f = |name: &str| {
            module.load_function(name).map_err(cuda_err(format_args!(
                "kernel {name} missing from the loaded image"
            )))
        };
        // The kernels of widths 1..=MATVEC_MAX_COLS, which always have a name.
        let widths =
            |name: &dyn Fn(usize) -> Option<String>| -> Result<[CudaFunction; MATVEC_MAX_COLS]> {
                let mut row = Vec::with_capacity(MATVEC_MAX_COLS);
                for c in 1..=MATVEC_MAX_COLS {
                    row.push(f(&name(c).unwrap_or_default())?);
                }
                let Ok(row) = <[CudaFunction; MATVEC_MAX_COLS]>::try_from(row) else {
                    unreachable!("one mat-vec kernel per width 1..={MATVEC_MAX_COLS}")
                };
                Ok(row)
            };
        let mut matvec = Vec::new();
        let mut matvec_q8 = Vec::new();
        let mut matmul = Vec::new();
        let mut embed = Vec::new();
        for suffix in FORMAT_SUFFIXES {
            matvec.push(widths(&|c| geometry::matvec_name(suffix, c))?);
            matvec_q8.push(match ActQuant::of(suffix) {
                Some(_) => Some(widths(&|c| geometry::matvec_q8_name(suffix, c))?),
                None => None,
            });
            matmul.push(f(&geometry::matmul_name(suffix))?);
            embed.push(f(&geometry::embed_name(suffix))?);
        }
        Ok(Kernels {
            matvec,
            matvec_q8,
            quantize_q8_32: f(ActQuant::Q8_32.kernel_name())?,
            quantize_q8_k: f(ActQuant::Q8K.kernel_name())?,
            matmul,
            embed,
            rmsnorm: f("rmsnorm")?,
            rmsnorm_gather: f("rmsnorm_gather")?,
            rmsnorm_heads: f("rmsnorm_heads")?,
            rope: f("rope")?,
            kv_store: f("kv_store")?,
            kv_store_f16: f("kv_store_f16")?,
            attention: f("attention")?,
            attention_f16: f("attention_f16")?,
            attention_split: f("attention_split")?,
            attention_split_f16: f("attention_split_f16")?,
            attention_merge: f("attention_merge")?,
            attention_tiled: f("attention_tiled")?,
            attention_tiled_f16: f("attention_tiled_f16")?,
            swiglu: f("swiglu")?,
            add_in_place: f("add_in_place")?,
            add_bias: f("add_bias")?,
            argmax_rows: f("argmax_rows")?,
        })
    }
}

/// An element type of the device KV cache: f32, or f16 held as its raw
/// bits (`u16`), which `kv_store_f16` rounds to and `attention_f16` widens.
pub trait KvElem: DeviceRepr + ValidAsZeroBits + Copy + Unpin + 'static {
    const F16: bool;
}

impl KvElem for f32 {
    const F16: bool = false;
}

impl KvElem for u16 {
    const F16: bool = true;
}

/// What the device is, for logs and the benchmark.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub total_bytes: usize,
    /// The driver's CUDA version, e.g. 12060 for 12.6.
    pub driver_version: i32,
    /// An integrated GPU (Jetson): device memory is the host's RAM.
    pub integrated: bool,
}

impl std::fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CUDA device {}: {} (sm_{}{}, {:.1} GiB{}, driver CUDA {}.{})",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_bytes as f64 / (1u64 << 30) as f64,
            if self.integrated {
                " shared with the host"
            } else {
                ""
            },
            self.driver_version / 1000,
            self.driver_version % 1000 / 10
        )
    }
}

/// Ask the driver to block, not spin, when the host waits for the device.
///
/// By default (`CU_CTX_SCHED_AUTO`) a process with fewer active contexts
/// than cores spins: every host wait (a streamed layer's copy, a mapped
/// layer's kernels, the logits) keeps a core at 100% while the GPU works.
/// On a Jetson that core is one of 6 to 12 the loader thread and the rest
/// of the board share, and it burns power the GPU could use. Blocking sync
/// sleeps on an interrupt instead; the wake-up costs microseconds, against
/// waits of milliseconds per layer. Set on the primary context before it is
/// first made active (cudarc's `CudaContext::set_blocking_synchronize`
/// calls `cuCtxSetFlags`, which drivers before CUDA 12.1 do not have); if
/// another user already made it active with other flags, the driver keeps
/// theirs, so a failure here is only logged. The events the host waits on
/// carry `CU_EVENT_BLOCKING_SYNC` as well ([`Gpu::synchronize`],
/// `double_buffer.rs`), which blocks whatever the context's flags.
fn set_blocking_sync(ordinal: usize) {
    let set = (|| -> std::result::Result<(), DriverError> {
        cudarc::driver::result::init()?;
        let dev = cudarc::driver::result::device::get(ordinal as i32)?;
        // SAFETY: plain call into the loaded driver on a valid device.
        unsafe {
            sys::cuDevicePrimaryCtxSetFlags_v2(
                dev,
                sys::CUctx_flags::CU_CTX_SCHED_BLOCKING_SYNC as u32,
            )
        }
        .result()
    })();
    if let Err(e) = set {
        log::debug!("CUDA: cannot set blocking synchronization on device {ordinal}: {e}");
    }
}

/// `FLEA_NVRTC`: `off` never compiles the carried sources, `force` skips the
/// embedded fatbin (to exercise the NVRTC path on a GPU that could load
/// it); anything else (or unset): NVRTC only when the fatbin does not load.
fn nvrtc_mode() -> &'static str {
    match std::env::var("FLEA_NVRTC").as_deref() {
        Ok("off") => "off",
        Ok("force") => "force",
        _ => "auto",
    }
}

/// What the binary carries, for load errors.
pub fn carried() -> String {
    format!(
        "The binary carries SASS for sm_{{{FATBIN_ARCHS}}} and PTX for compute_{FATBIN_PTX_ARCH}, \
         built by CUDA {NVCC_RELEASE} (a driver older than that CUDA release cannot load them), \
         and the kernel sources for NVRTC"
    )
}

/// The kernel module: the embedded fatbin, or where the driver cannot load
/// it, the carried sources compiled with NVRTC for this device (cached on
/// disk; see `kernel_cache.rs`). An error names the device and driver
/// version, what the binary carries, and what NVRTC did.
fn load_kernels(ctx: &Arc<CudaContext>, info: &DeviceInfo) -> Result<Arc<CudaModule>> {
    let mode = nvrtc_mode();
    let fatbin_error = if mode == "force" {
        "skipped (FLEA_NVRTC=force)".to_string()
    } else {
        match ctx.load_module(Ptx::from_binary(FATBIN.to_vec())) {
            Ok(m) => return Ok(m),
            Err(e) => e.to_string(),
        }
    };
    let fail = |nvrtc: &str| {
        Error::config(format!(
            "CUDA: cannot load the kernels on {info}: {fatbin_error}. {}. NVRTC: {nvrtc}. \
             Update the driver, install NVRTC, or rebuild with a toolkit no newer than the \
             driver and FLEA_CUDA_ARCHS including this GPU",
            carried()
        ))
    };
    if mode == "off" {
        return Err(fail("not tried (FLEA_NVRTC=off)"));
    }
    let arch = info.compute_capability;
    let mut compiled = super::nvrtc::kernels_for(arch, false).map_err(|e| fail(&e))?;
    let mut loaded = ctx.load_module(Ptx::from_binary(compiled.image.clone()));
    if loaded.is_err() && compiled.from_cache {
        // A cached image the driver refuses (a driver changed under it):
        // compile afresh, over it.
        compiled = super::nvrtc::kernels_for(arch, true).map_err(|e| fail(&e))?;
        loaded = ctx.load_module(Ptx::from_binary(compiled.image.clone()));
    }
    match loaded {
        Ok(m) => {
            let line = format!(
                "CUDA: the embedded kernels do not load on {info} ({fatbin_error}); using the \
                 carried sources compiled with {}",
                compiled.how
            );
            if compiled.from_cache || mode == "force" {
                log::info!("{line}");
            } else {
                log::warn!("{line}");
            }
            Ok(m)
        }
        Err(e) => Err(fail(&format!(
            "compiled them ({}), but the driver refused that image too: {e}",
            compiled.how
        ))),
    }
}

/// One device, one stream, the loaded kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    info: DeviceInfo,
    /// Recorded behind the stream's work for a host wait
    /// ([`Gpu::synchronize`]); `CU_EVENT_BLOCKING_SYNC`, so the wait sleeps.
    idle: CudaEvent,
}

/// A count as the kernels' `int`, or an error naming it.
fn i32_of(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| Error::config(format!("CUDA: {what} = {n} does not fit a kernel's int")))
}

impl Gpu {
    /// Open device `ordinal`: the caller has checked that the driver
    /// library exists ([`super::cuda_available`] or [`super::open`]).
    pub(crate) fn new(ordinal: usize) -> Result<Gpu> {
        let no_device = |e: DriverError| {
            Error::config(format!(
                "CUDA requested but no driver/device: device {ordinal}: {e}"
            ))
        };
        set_blocking_sync(ordinal);
        let ctx = CudaContext::new(ordinal).map_err(no_device)?;
        // SAFETY: every buffer of this backend is used on the one stream
        // made below, in submission order, so the per-buffer events that
        // cudarc would otherwise record are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err("create stream"))?;
        let mut driver_version = 0;
        // SAFETY: plain out-parameter call into the loaded driver.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(cuda_err("cuDriverGetVersion"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(cuda_err("device name"))?,
            compute_capability: ctx
                .compute_capability()
                .map_err(cuda_err("compute capability"))?,
            total_bytes: ctx.total_mem().map_err(cuda_err("device memory size"))?,
            driver_version,
            integrated: ctx
                .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_INTEGRATED)
                .map_err(cuda_err("device attribute INTEGRATED"))?
                != 0,
        };
        let module = load_kernels(&ctx, &info)?;
        let kernels = Kernels::load(&module)?;
        let idle = ctx
            .new_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(cuda_err("create event"))?;
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            info,
            idle,
        })
    }

    /// The scheduling flags of this device's primary context
    /// (`CU_CTX_SCHED_*`), as the driver reports them.
    pub fn context_flags(&self) -> Result<u32> {
        let (mut flags, mut active) = (0u32, 0i32);
        // SAFETY: out-parameter call into the loaded driver.
        unsafe { sys::cuDevicePrimaryCtxGetState(self.ctx.cu_device(), &mut flags, &mut active) }
            .result()
            .map_err(cuda_err("cuDevicePrimaryCtxGetState"))?;
        Ok(flags)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(cuda_err("cuMemGetInfo"))
    }

    /// Wait for everything submitted so far, sleeping rather than spinning:
    /// an event recorded behind the stream's work and waited on with
    /// blocking sync, whatever flags the context got (see
    /// [`set_blocking_sync`]).
    pub fn synchronize(&self) -> Result<()> {
        self.idle
            .record(&self.stream)
            .map_err(cuda_err("record event"))?;
        self.idle.synchronize().map_err(cuda_err("synchronize"))
    }

    /// Another stream on this device, for work that overlaps the kernels
    /// (the streamed layers' copies).
    pub fn new_stream(&self) -> Result<Arc<CudaStream>> {
        self.ctx.new_stream().map_err(cuda_err("create stream"))
    }

    /// Device address of a buffer's first element.
    pub fn address_of<T>(buf: &CudaSlice<T>) -> sys::CUdeviceptr {
        // Event tracking is off: this only reads the address.
        let (ptr, _sync) = buf.device_ptr(buf.stream());
        ptr
    }

    /// Enqueue a copy of `host` to device address `dst` on `stream`
    /// (`cuMemcpyHtoDAsync`). From page-locked memory it returns at once
    /// and the DMA runs later; from pageable memory the driver stages the
    /// bytes before it returns.
    ///
    /// # Safety
    /// `dst..dst + host.len()` must be device memory of this context that
    /// nothing else uses until the copy completes, and `host` must stay
    /// valid and unchanged until then (record an event behind the copy and
    /// wait for it before handing the host bytes back).
    pub unsafe fn copy_htod_async(
        &self,
        stream: &CudaStream,
        dst: sys::CUdeviceptr,
        host: &[u8],
    ) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .map_err(cuda_err("bind context"))?;
        cudarc::driver::result::memcpy_htod_async(dst, host, stream.cu_stream()).map_err(cuda_err(
            format_args!("copy {} bytes host to device", host.len()),
        ))
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        // A zero-length allocation is legal but some drivers return null;
        // keep every buffer at least one element long.
        self.stream
            .alloc_zeros(n.max(1))
            .map_err(cuda_err(format_args!(
                "allocate {} bytes",
                n * std::mem::size_of::<T>()
            )))
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(host).map_err(cuda_err(format_args!(
            "upload {} bytes",
            std::mem::size_of_val(host)
        )))
    }

    /// Copy `host` into the start of `dev`.
    pub fn upload_into<T: DeviceRepr>(
        &self,
        host: &[T],
        dev: &mut CudaViewMut<'_, T>,
    ) -> Result<()> {
        ensure(host.len() <= dev.len(), || {
            format!(
                "upload of {} elements into a buffer of {}",
                host.len(),
                dev.len()
            )
        })?;
        self.stream
            .memcpy_htod(host, dev)
            .map_err(cuda_err(format_args!(
                "upload {} bytes",
                std::mem::size_of_val(host)
            )))
    }

    /// Copy `dev` into `host` and wait for it.
    pub fn download_into<T: DeviceRepr>(
        &self,
        dev: &CudaView<'_, T>,
        host: &mut [T],
    ) -> Result<()> {
        ensure(dev.len() <= host.len(), || {
            format!(
                "download of {} elements into a buffer of {}",
                dev.len(),
                host.len()
            )
        })?;
        self.stream
            .memcpy_dtoh(dev, &mut host[..dev.len()])
            .map_err(cuda_err("download"))?;
        self.synchronize()
    }

    pub fn download<T: DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaView<'_, T>,
    ) -> Result<Vec<T>> {
        let mut v = vec![T::default(); dev.len()];
        self.download_into(dev, &mut v)?;
        Ok(v)
    }

    // ------------------------------------------------------------ launches

    /// `y = x W^T` for `n` rows of `x`: the mat-vec kernel for up to 8 rows,
    /// the tiled kernel beyond. `x` is `(n, cols)`, `y` is `(n, rows)`.
    pub fn matmul(
        &self,
        w: &DevWeight<'_>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        let plan = geometry::matmul_plan(n).map_err(|e| Error::config(format!("CUDA: {e}")))?;
        match plan {
            MatmulPlan::Matvec(n) => self.matvec(w, x, y, n),
            MatmulPlan::Tiled => self.matmul_tiled(w, x, y, n),
        }
    }

    fn check_matmul(
        w: &DevWeight<'_>,
        x: &CudaView<'_, f32>,
        y: &CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        w.check("matmul")?;
        ensure(x.len() >= n.saturating_mul(w.cols), || {
            format!("matmul: x holds {} < {n} x {}", x.len(), w.cols)
        })?;
        ensure(y.len() >= n.saturating_mul(w.rows), || {
            format!("matmul: y holds {} < {n} x {}", y.len(), w.rows)
        })?;
        // Block formats read activations as float4.
        let (ptr, _sync) = x.device_ptr(x.stream());
        ensure(ptr % 16 == 0, || {
            "matmul: activations must be 16-byte aligned (start a view at a row)".into()
        })
    }

    /// The mat-vec kernel, `1 <= n <= 8` rows.
    pub fn matvec(
        &self,
        w: &DevWeight<'_>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        ensure((1..=MATVEC_MAX_COLS).contains(&n), || {
            format!("matvec of {n} rows (the kernels take 1 to {MATVEC_MAX_COLS})")
        })?;
        Self::check_matmul(w, x, y, n)?;
        let f = &self.kernels.matvec[w.format.index][n - 1];
        let row_bytes = w.row_bytes() as u64;
        let rows = i32_of(w.rows, "rows")?;
        let cols = i32_of(w.cols, "cols")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&w.ptr)
            .arg(&row_bytes)
            .arg(&rows)
            .arg(&cols)
            .arg(x)
            .arg(y);
        // SAFETY: the arguments match the kernel's signature
        // (kernels/matvec.cu) and the buffers were checked above.
        unsafe { b.launch(dims(geometry::matvec(w.rows))?) }
            .map(drop)
            .map_err(cuda_err("launch matvec"))
    }

    /// The tiled kernel, any `n >= 1`.
    pub fn matmul_tiled(
        &self,
        w: &DevWeight<'_>,
        x: &CudaView<'_, f32>,
        y: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        ensure(n >= 1, || "matmul of zero rows".into())?;
        Self::check_matmul(w, x, y, n)?;
        let f = &self.kernels.matmul[w.format.index];
        let row_bytes = w.row_bytes() as u64;
        let rows = i32_of(w.rows, "rows")?;
        let cols = i32_of(w.cols, "cols")?;
        let n32 = i32_of(n, "positions")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(&w.ptr)
            .arg(&row_bytes)
            .arg(&rows)
            .arg(&cols)
            .arg(x)
            .arg(y)
            .arg(&n32);
        // SAFETY: signature of kernels/matmul.cu; buffers checked above.
        unsafe { b.launch(dims(geometry::matmul(w.rows, n))?) }
            .map(drop)
            .map_err(cuda_err("launch matmul"))
    }
}

/// 8-bit activations on the device for the integer mat-vec
/// (`matvec_q8_<fmt>_<c>`, kernels/matvec_q8.cu), laid out as the
/// quantizers write them (kernels/dot_q8.cuh): the int8 quants four to a
/// word, one f32 scale per block of 32 or 256 activations, and for Q8_K
/// one i32 sum per 16. Sized once for the widest input a pass quantizes.
pub struct Q8Scratch {
    qs: CudaSlice<i32>,
    d: CudaSlice<f32>,
    sums: CudaSlice<i32>,
    max_values: usize,
    /// What the buffers hold now: (quantization, rows, cols).
    holds: Option<(ActQuant, usize, usize)>,
}

impl Q8Scratch {
    /// Buffers for up to `max_values` activations (rows x cols).
    pub fn new(gpu: &Gpu, max_values: usize) -> Result<Q8Scratch> {
        let [qs, d, sums] = Self::lengths(max_values);
        Ok(Q8Scratch {
            qs: gpu.zeros(qs)?,
            d: gpu.zeros(d)?,
            sums: gpu.zeros(sums)?,
            max_values,
            holds: None,
        })
    }

    /// Element counts (all 4-byte) of the quants, scales and sums: scales
    /// for blocks of 32, the smaller of the two block sizes.
    fn lengths(max_values: usize) -> [usize; 3] {
        [
            max_values.div_ceil(4),
            max_values.div_ceil(32),
            max_values.div_ceil(16),
        ]
    }

    /// Device bytes [`Q8Scratch::new`] allocates.
    pub fn bytes(max_values: usize) -> u64 {
        Self::lengths(max_values)
            .iter()
            .map(|&n| 4 * n as u64)
            .sum()
    }
}

/// One activation matrix (`n` rows) that several weights multiply, with
/// its 8-bit form: quantized by the first integer mat-vec that needs it
/// and reused by the next ones of the same quantization and width (Q, K
/// and V; gate and up). Borrowing `x` for its lifetime keeps the quants
/// from outliving the values they were made from.
pub struct QuantInput<'a> {
    x: CudaView<'a, f32>,
    n: usize,
    scratch: &'a mut Q8Scratch,
}

impl<'a> QuantInput<'a> {
    pub fn new(x: CudaView<'a, f32>, n: usize, scratch: &'a mut Q8Scratch) -> QuantInput<'a> {
        scratch.holds = None;
        QuantInput { x, n, scratch }
    }
}

impl Gpu {
    /// `y = x W^T` for the `n` rows of `input`: decode widths (`n <= 8`) of
    /// quantized formats through the integer mat-vec on 8-bit activations
    /// (the CPU backend's activation values), anything else as
    /// [`Gpu::matmul`] does on the f32 activations.
    pub fn matmul_quant(
        &self,
        w: &DevWeight<'_>,
        input: &mut QuantInput<'_>,
        y: &mut CudaViewMut<'_, f32>,
    ) -> Result<()> {
        let n = input.n;
        let plan = geometry::matmul_plan(n).map_err(|e| Error::config(format!("CUDA: {e}")))?;
        match (ActQuant::of(w.format.suffix()), plan) {
            (Some(kind), MatmulPlan::Matvec(n)) => {
                if input.scratch.holds != Some((kind, n, w.cols)) {
                    self.quantize_activations(kind, &input.x, n, w.cols, input.scratch)?;
                }
                self.matvec_q8(w, input.scratch, y, n)
            }
            _ => self.matmul(w, &input.x, y, n),
        }
    }

    /// Quantize `n` rows of `cols` activations of `x` into `out` as `kind`
    /// (`quantize_q8_32` / `quantize_q8_k`).
    pub fn quantize_activations(
        &self,
        kind: ActQuant,
        x: &CudaView<'_, f32>,
        n: usize,
        cols: usize,
        out: &mut Q8Scratch,
    ) -> Result<()> {
        out.holds = None;
        let values = n.saturating_mul(cols);
        ensure(values > 0 && cols.is_multiple_of(kind.block()), || {
            format!(
                "quantize: {n} rows of {cols} activations are not whole blocks of {}",
                kind.block()
            )
        })?;
        ensure(x.len() >= values, || {
            format!("quantize: x holds {} < {n} x {cols}", x.len())
        })?;
        ensure(values <= out.max_values, || {
            format!(
                "quantize: {n} x {cols} activations exceed the scratch's {}",
                out.max_values
            )
        })?;
        // The quantizers read eight floats at a time as two float4.
        let (ptr, _sync) = x.device_ptr(x.stream());
        ensure(ptr % 16 == 0, || {
            "quantize: activations must be 16-byte aligned (start a view at a row)".into()
        })?;
        let n_values = i32_of(values, "activations")?;
        let mut b = match kind {
            ActQuant::Q8_32 => self.stream.launch_builder(&self.kernels.quantize_q8_32),
            ActQuant::Q8K => self.stream.launch_builder(&self.kernels.quantize_q8_k),
        };
        b.arg(x).arg(&mut out.qs).arg(&mut out.d);
        if kind == ActQuant::Q8K {
            b.arg(&mut out.sums);
        }
        b.arg(&n_values);
        // SAFETY: the arguments match the kernel's signature
        // (kernels/matvec_q8.cu); x holds `values` floats and the outputs
        // were sized for at least as many (Q8Scratch::lengths).
        unsafe { b.launch(dims(geometry::quantize(values))?) }
            .map_err(cuda_err(format_args!("launch {}", kind.kernel_name())))?;
        out.holds = Some((kind, n, cols));
        Ok(())
    }

    /// The integer mat-vec, `1 <= n <= 8` rows: `y = x W^T` with `x` the
    /// activations last quantized into `acts`, which must be `n` rows of
    /// `w.cols` in the format's quantization.
    pub fn matvec_q8(
        &self,
        w: &DevWeight<'_>,
        acts: &Q8Scratch,
        y: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        ensure((1..=MATVEC_MAX_COLS).contains(&n), || {
            format!("matvec_q8 of {n} rows (the kernels take 1 to {MATVEC_MAX_COLS})")
        })?;
        w.check("matvec_q8")?;
        let (Some(kind), Some(fs)) = (
            ActQuant::of(w.format.suffix()),
            self.kernels.matvec_q8[w.format.index].as_ref(),
        ) else {
            return Err(Error::config(format!(
                "CUDA: matvec_q8: no integer mat-vec for {} weights",
                w.format.ggml_type
            )));
        };
        ensure(
            matches!(acts.holds, Some((k, rows, cols)) if k == kind && rows >= n && cols == w.cols),
            || {
                format!(
                    "matvec_q8: {} weights of {} columns need {n} rows quantized as {kind:?}, \
                     the scratch holds {:?}",
                    w.format.ggml_type, w.cols, acts.holds
                )
            },
        )?;
        ensure(y.len() >= n.saturating_mul(w.rows), || {
            format!("matvec_q8: y holds {} < {n} x {}", y.len(), w.rows)
        })?;
        let row_bytes = w.row_bytes() as u64;
        let rows = i32_of(w.rows, "rows")?;
        let cols = i32_of(w.cols, "cols")?;
        let mut b = self.stream.launch_builder(&fs[n - 1]);
        b.arg(&w.ptr)
            .arg(&row_bytes)
            .arg(&rows)
            .arg(&cols)
            .arg(&acts.qs)
            .arg(&acts.d)
            .arg(&acts.sums)
            .arg(y);
        // SAFETY: the arguments match the kernel's signature
        // (kernels/matvec_q8.cu); the weights were checked above and the
        // activations hold at least n rows of w.cols in the format's
        // quantization (`holds`, set only by a successful quantize).
        unsafe { b.launch(dims(geometry::matvec(w.rows))?) }
            .map(drop)
            .map_err(cuda_err("launch matvec_q8"))
    }
}

impl Gpu {
    /// `out` row p = row `tokens[p]` of `w`, dequantized; `out` is `(n, cols)`.
    pub fn embed(
        &self,
        w: &DevWeight<'_>,
        tokens: &CudaView<'_, i32>,
        out: &mut CudaViewMut<'_, f32>,
        n: usize,
    ) -> Result<()> {
        let expect = w
            .format
            .ggml_type
            .row_bytes(w.cols)
            .and_then(|b| b.checked_mul(w.rows));
        ensure(expect == Some(w.len) && w.rows > 0, || {
            format!(
                "embed: {} [{} x {}] needs {expect:?} bytes, has {}",
                w.format.ggml_type, w.rows, w.cols, w.len
            )
        })?;
        ensure(tokens.len() >= n, || {
            format!("embed: {} token ids < {n}", tokens.len())
        })?;
        ensure(out.len() >= n.saturating_mul(w.cols), || {
            format!("embed: output holds {} < {n} x {}", out.len(), w.cols)
        })?;
        if n == 0 {
            return Ok(());
        }
        let f = &self.kernels.embed[w.format.index];
        let row_bytes = w.row_bytes() as u64;
        let cols = i32_of(w.cols, "cols")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(out)
            .arg(&w.ptr)
            .arg(&row_bytes)
            .arg(tokens)
            .arg(&cols);
        // SAFETY: signature of kernels/embed.cu; token ids are validated by
        // the engine (< rows) before a pass, sizes checked above.
        unsafe { b.launch(dims(geometry::embed(n, w.cols))?) }
            .map(drop)
            .map_err(cuda_err("launch embed"))
    }

    /// RMSNorm of `n` rows of `dim`: `out` row p from `x` row p.
    pub fn rmsnorm(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        x: &CudaView<'_, f32>,
        weight: &CudaView<'_, f32>,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        let nd = n.saturating_mul(dim);
        ensure(
            out.len() >= nd && x.len() >= nd && weight.len() >= dim,
            || {
                format!(
                    "rmsnorm of {n} x {dim}: out holds {}, x {}, weight {}",
                    out.len(),
                    x.len(),
                    weight.len()
                )
            },
        )?;
        if n == 0 {
            return Ok(());
        }
        let dim32 = i32_of(dim, "dim")?;
        let mut b = self.stream.launch_builder(&self.kernels.rmsnorm);
        b.arg(out).arg(x).arg(weight).arg(&dim32).arg(&eps);
        // SAFETY: signature of kernels/norm.cu; sizes checked above.
        unsafe { b.launch(dims(geometry::per_row(n))?) }
            .map(drop)
            .map_err(cuda_err("launch rmsnorm"))
    }

    /// RMSNorm gathering rows: `out` row m from `x` row `src_rows[m]`.
    /// Every `src_rows[m]` must be a row of `x` (`< x.len() / dim`).
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm_gather(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        x: &CudaView<'_, f32>,
        weight: &CudaView<'_, f32>,
        src_rows: &CudaView<'_, i32>,
        m: usize,
        dim: usize,
        eps: f32,
    ) -> Result<()> {
        ensure(
            out.len() >= m.saturating_mul(dim) && weight.len() >= dim && src_rows.len() >= m,
            || {
                format!(
                    "rmsnorm_gather of {m} x {dim}: out holds {}, weight {}, row indices {}",
                    out.len(),
                    weight.len(),
                    src_rows.len()
                )
            },
        )?;
        if m == 0 {
            return Ok(());
        }
        let dim32 = i32_of(dim, "dim")?;
        let mut b = self.stream.launch_builder(&self.kernels.rmsnorm_gather);
        b.arg(out)
            .arg(x)
            .arg(weight)
            .arg(src_rows)
            .arg(&dim32)
            .arg(&eps);
        // SAFETY: signature of kernels/norm.cu; the caller guarantees the
        // source rows lie in x.
        unsafe { b.launch(dims(geometry::per_row(m))?) }
            .map(drop)
            .map_err(cuda_err("launch rmsnorm_gather"))
    }

    /// RoPE in place on `x` = `(n_rows, n_heads * head_dim)`: the first
    /// `half_rot` pairs of each head turn by `table[row_pos[r]]`, pairs
    /// laid out as `style` says. `table` is `(n_ctx, half_rot)` pairs of
    /// (cos, sin) as 2 floats.
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        table: &CudaView<'_, f32>,
        row_pos: &CudaView<'_, i32>,
        n_rows: usize,
        n_heads: usize,
        head_dim: usize,
        half_rot: usize,
        style: RopeStyle,
    ) -> Result<()> {
        let need = n_rows.saturating_mul(n_heads).saturating_mul(head_dim);
        ensure(x.len() >= need, || {
            format!(
                "rope: x holds {} < {n_rows} x {n_heads} x {head_dim}",
                x.len()
            )
        })?;
        ensure(
            row_pos.len() >= n_rows && half_rot.saturating_mul(2) <= head_dim,
            || {
                format!(
                    "rope: {} positions for {n_rows} rows, {half_rot} rotated pairs of a \
                     {head_dim}-wide head",
                    row_pos.len()
                )
            },
        )?;
        if n_rows == 0 || half_rot == 0 {
            return Ok(());
        }
        let (r, h, hd, hr) = (
            i32_of(n_rows, "rows")?,
            i32_of(n_heads, "heads")?,
            i32_of(head_dim, "head_dim")?,
            i32_of(half_rot, "half_rot")?,
        );
        let neox = i32::from(style == RopeStyle::Neox);
        let mut b = self.stream.launch_builder(&self.kernels.rope);
        b.arg(x)
            .arg(table)
            .arg(row_pos)
            .arg(&r)
            .arg(&h)
            .arg(&hd)
            .arg(&hr)
            .arg(&neox);
        // SAFETY: signature of kernels/rope.cu; positions are < n_ctx (the
        // engine validates them), the table holds n_ctx positions.
        unsafe { b.launch(dims(geometry::rope(n_rows, n_heads, half_rot))?) }
            .map(drop)
            .map_err(cuda_err("launch rope"))
    }

    /// Append rows of `k`, `v` (`(n_rows, kv_dim)`) to one layer's cache
    /// (`[seq][n_ctx][kv_dim]`) at `(row_seq[r], row_pos[r])`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_store<T: KvElem>(
        &self,
        k_cache: &mut CudaViewMut<'_, T>,
        v_cache: &mut CudaViewMut<'_, T>,
        k: &CudaView<'_, f32>,
        v: &CudaView<'_, f32>,
        row_seq: &CudaView<'_, i32>,
        row_pos: &CudaView<'_, i32>,
        n_rows: usize,
        kv_dim: usize,
        n_ctx: usize,
    ) -> Result<()> {
        let rows = n_rows.saturating_mul(kv_dim);
        ensure(k.len() >= rows && v.len() >= rows, || {
            format!(
                "kv_store: k holds {}, v {} < {n_rows} x {kv_dim}",
                k.len(),
                v.len()
            )
        })?;
        ensure(row_seq.len() >= n_rows && row_pos.len() >= n_rows, || {
            format!(
                "kv_store: {} sequence and {} position indices for {n_rows} rows",
                row_seq.len(),
                row_pos.len()
            )
        })?;
        let per_seq = n_ctx.saturating_mul(kv_dim);
        ensure(
            per_seq > 0 && k_cache.len() == v_cache.len() && k_cache.len() % per_seq == 0,
            || {
                format!(
                    "kv_store: caches of {} and {} floats are not whole sequences of \
                     {n_ctx} x {kv_dim}",
                    k_cache.len(),
                    v_cache.len()
                )
            },
        )?;
        if n_rows == 0 {
            return Ok(());
        }
        let (r, d, c) = (
            i32_of(n_rows, "rows")?,
            i32_of(kv_dim, "kv_dim")?,
            i32_of(n_ctx, "n_ctx")?,
        );
        let kernel = match T::F16 {
            true => &self.kernels.kv_store_f16,
            false => &self.kernels.kv_store,
        };
        let mut b = self.stream.launch_builder(kernel);
        b.arg(k_cache)
            .arg(v_cache)
            .arg(k)
            .arg(v)
            .arg(row_seq)
            .arg(row_pos)
            .arg(&r)
            .arg(&d)
            .arg(&c);
        // SAFETY: signature of kernels/rope.cu (kv_store or kv_store_f16 by T); sequence slots and positions
        // are validated by the engine against the cache's n_seq and n_ctx.
        unsafe { b.launch(dims(geometry::elementwise(n_rows * kv_dim))?) }
            .map(drop)
            .map_err(cuda_err("launch kv_store"))
    }

    /// Causal GQA attention of `n_rows` query rows against one layer's
    /// cache; row r sees positions `0..=row_pos[r]` of sequence `row_seq[r]`.
    /// One block per (head, row): any head_dim up to the maximum.
    #[allow(clippy::too_many_arguments)]
    pub fn attention<T: KvElem>(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        q: &CudaView<'_, f32>,
        k_cache: &CudaView<'_, T>,
        v_cache: &CudaView<'_, T>,
        row_seq: &CudaView<'_, i32>,
        row_pos: &CudaView<'_, i32>,
        n_rows: usize,
        heads: AttentionShape,
    ) -> Result<()> {
        let io = AttentionIo {
            out_len: out.len(),
            q_len: q.len(),
            cache_lens: (k_cache.len(), v_cache.len()),
            index_lens: (row_seq.len(), row_pos.len()),
        };
        let Some(a) = attention_args("attention", &io, n_rows, heads, false)? else {
            return Ok(());
        };
        let kernel = match T::F16 {
            true => &self.kernels.attention_f16,
            false => &self.kernels.attention,
        };
        let mut b = self.stream.launch_builder(kernel);
        b.arg(out)
            .arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(row_seq)
            .arg(row_pos)
            .arg(&a.h)
            .arg(&a.kvh)
            .arg(&a.hd)
            .arg(&a.c)
            .arg(&a.w)
            .arg(&a.scale);
        // SAFETY: signature of kernels/attention.cu (attention or attention_f16 by T); shapes checked above,
        // slots and positions validated by the engine.
        unsafe { b.launch(dims(geometry::attention(heads.n_heads, n_rows))?) }
            .map(drop)
            .map_err(cuda_err("launch attention"))
    }

    /// [`Gpu::attention`] split over positions (flash-decoding): each row's
    /// visible positions in `splits` ranges of `split_len`, one block per
    /// (head, row, range), whose partial softmaxes `part` holds
    /// (`n_rows * n_heads * splits * (head_dim + 2)` floats; unused with
    /// one split) until `attention_merge` combines them. The split count
    /// must cover the longest row (`splits * split_len` at least its
    /// visible positions: [`geometry::attention_plan`]). Even head_dim.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_split<T: KvElem>(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        part: &mut CudaViewMut<'_, f32>,
        q: &CudaView<'_, f32>,
        k_cache: &CudaView<'_, T>,
        v_cache: &CudaView<'_, T>,
        row_seq: &CudaView<'_, i32>,
        row_pos: &CudaView<'_, i32>,
        n_rows: usize,
        heads: AttentionShape,
        (splits, split_len): (usize, usize),
    ) -> Result<()> {
        let io = AttentionIo {
            out_len: out.len(),
            q_len: q.len(),
            cache_lens: (k_cache.len(), v_cache.len()),
            index_lens: (row_seq.len(), row_pos.len()),
        };
        let Some(a) = attention_args("attention_split", &io, n_rows, heads, true)? else {
            return Ok(());
        };
        ensure(splits >= 1 && split_len >= 1, || {
            format!("attention_split: {splits} splits of {split_len} positions")
        })?;
        let need = match splits {
            1 => 0,
            _ => n_rows
                .saturating_mul(heads.n_heads)
                .saturating_mul(splits)
                .saturating_mul(heads.head_dim + 2),
        };
        ensure(part.len() >= need, || {
            format!(
                "attention_split: scratch of {} floats < {need} for {n_rows} rows x {} heads x \
                 {splits} splits",
                part.len(),
                heads.n_heads
            )
        })?;
        let (z, sl) = (
            i32_of(splits, "splits")?,
            i32_of(split_len, "split length")?,
        );
        let kernel = match T::F16 {
            true => &self.kernels.attention_split_f16,
            false => &self.kernels.attention_split,
        };
        let mut b = self.stream.launch_builder(kernel);
        b.arg(&mut *out)
            .arg(&mut *part)
            .arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(row_seq)
            .arg(row_pos)
            .arg(&a.h)
            .arg(&a.kvh)
            .arg(&a.hd)
            .arg(&a.c)
            .arg(&a.w)
            .arg(&a.scale)
            .arg(&sl);
        let grid = geometry::attention_split(heads.n_heads, n_rows, splits);
        // SAFETY: signature of kernels/attention.cu (attention_split or
        // attention_split_f16 by T); shapes and the scratch checked above,
        // slots and positions validated by the engine.
        unsafe { b.launch(dims(grid)?) }
            .map(drop)
            .map_err(cuda_err("launch attention_split"))?;
        if splits == 1 {
            return Ok(());
        }
        let mut b = self.stream.launch_builder(&self.kernels.attention_merge);
        let part = part.as_view();
        b.arg(out).arg(&part).arg(&a.h).arg(&a.hd).arg(&z);
        // SAFETY: signature of kernels/attention.cu (attention_merge); the
        // split kernel above filled `splits` records per (row, head).
        unsafe { b.launch(dims(geometry::attention(heads.n_heads, n_rows))?) }
            .map(drop)
            .map_err(cuda_err("launch attention_merge"))
    }

    /// [`Gpu::attention`] for prefill: a block per (head, tile of rows)
    /// reads each position's keys and values once for the whole tile.
    /// Correct for any rows; fast when a tile's rows are consecutive
    /// positions of one sequence. Even head_dim.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_tiled<T: KvElem>(
        &self,
        out: &mut CudaViewMut<'_, f32>,
        q: &CudaView<'_, f32>,
        k_cache: &CudaView<'_, T>,
        v_cache: &CudaView<'_, T>,
        row_seq: &CudaView<'_, i32>,
        row_pos: &CudaView<'_, i32>,
        n_rows: usize,
        heads: AttentionShape,
    ) -> Result<()> {
        let io = AttentionIo {
            out_len: out.len(),
            q_len: q.len(),
            cache_lens: (k_cache.len(), v_cache.len()),
            index_lens: (row_seq.len(), row_pos.len()),
        };
        let Some(a) = attention_args("attention_tiled", &io, n_rows, heads, true)? else {
            return Ok(());
        };
        let r = i32_of(n_rows, "rows")?;
        let kernel = match T::F16 {
            true => &self.kernels.attention_tiled_f16,
            false => &self.kernels.attention_tiled,
        };
        let mut b = self.stream.launch_builder(kernel);
        b.arg(out)
            .arg(q)
            .arg(k_cache)
            .arg(v_cache)
            .arg(row_seq)
            .arg(row_pos)
            .arg(&r)
            .arg(&a.h)
            .arg(&a.kvh)
            .arg(&a.hd)
            .arg(&a.c)
            .arg(&a.w)
            .arg(&a.scale);
        // SAFETY: signature of kernels/attention.cu (attention_tiled or
        // attention_tiled_f16 by T); shapes checked above, slots and
        // positions validated by the engine.
        unsafe { b.launch(dims(geometry::attention_tiled(heads.n_heads, n_rows))?) }
            .map(drop)
            .map_err(cuda_err("launch attention_tiled"))
    }

    /// `gate = silu(gate) * up` over the first `n` elements.
    pub fn swiglu(
        &self,
        gate: &mut CudaViewMut<'_, f32>,
        up: &CudaView<'_, f32>,
        n: usize,
    ) -> Result<()> {
        ensure(gate.len() >= n && up.len() >= n, || {
            format!("swiglu of {n}: gate holds {}, up {}", gate.len(), up.len())
        })?;
        let n64 = n as i64;
        let mut b = self.stream.launch_builder(&self.kernels.swiglu);
        b.arg(gate).arg(up).arg(&n64);
        // SAFETY: signature of kernels/elementwise.cu; sizes checked.
        unsafe { b.launch(dims(geometry::elementwise(n))?) }
            .map(drop)
            .map_err(cuda_err("launch swiglu"))
    }

    /// `x += y` over the first `n` elements.
    pub fn add_in_place(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        y: &CudaView<'_, f32>,
        n: usize,
    ) -> Result<()> {
        ensure(x.len() >= n && y.len() >= n, || {
            format!("add_in_place of {n}: x holds {}, y {}", x.len(), y.len())
        })?;
        let n64 = n as i64;
        let mut b = self.stream.launch_builder(&self.kernels.add_in_place);
        b.arg(x).arg(y).arg(&n64);
        // SAFETY: signature of kernels/elementwise.cu; sizes checked.
        unsafe { b.launch(dims(geometry::elementwise(n))?) }
            .map(drop)
            .map_err(cuda_err("launch add_in_place"))
    }

    /// `x[i] += bias[i % bias.len()]` over the first `n` elements: the
    /// bias added to every row.
    pub fn add_bias(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        bias: &CudaView<'_, f32>,
        n: usize,
    ) -> Result<()> {
        let width = bias.len();
        ensure(x.len() >= n && width > 0 && n.is_multiple_of(width), || {
            format!("add_bias of {n}: x holds {}, bias {width}", x.len())
        })?;
        let (w32, n64) = (i32_of(width, "bias width")?, n as i64);
        let mut b = self.stream.launch_builder(&self.kernels.add_bias);
        b.arg(x).arg(bias).arg(&w32).arg(&n64);
        // SAFETY: signature of kernels/elementwise.cu; sizes checked.
        unsafe { b.launch(dims(geometry::elementwise(n))?) }
            .map(drop)
            .map_err(cuda_err("launch add_bias"))
    }

    /// RMSNorm of each of the `heads` `weight.len()`-wide heads at the
    /// start of `x`, in place, all with `weight`.
    pub fn rmsnorm_heads(
        &self,
        x: &mut CudaViewMut<'_, f32>,
        weight: &CudaView<'_, f32>,
        heads: usize,
        eps: f32,
    ) -> Result<()> {
        let head_dim = weight.len();
        ensure(x.len() >= heads * head_dim, || {
            format!("rmsnorm_heads of {heads} x {head_dim}: x holds {}", x.len())
        })?;
        if heads == 0 {
            return Ok(());
        }
        let hd = i32_of(head_dim, "head_dim")?;
        let mut b = self.stream.launch_builder(&self.kernels.rmsnorm_heads);
        b.arg(x).arg(weight).arg(&hd).arg(&eps);
        // SAFETY: signature of kernels/norm.cu; sizes checked.
        unsafe { b.launch(dims(geometry::per_row(heads))?) }
            .map(drop)
            .map_err(cuda_err("launch rmsnorm_heads"))
    }

    /// `out[r]` = index of the largest of logits row r (lowest index on
    /// ties); `logits` is `(rows, vocab)`.
    pub fn argmax_rows(
        &self,
        out: &mut CudaViewMut<'_, u32>,
        logits: &CudaView<'_, f32>,
        rows: usize,
        vocab: usize,
    ) -> Result<()> {
        ensure(
            out.len() >= rows && logits.len() >= rows.saturating_mul(vocab) && vocab > 0,
            || {
                format!(
                    "argmax of {rows} x {vocab}: out holds {}, logits {}",
                    out.len(),
                    logits.len()
                )
            },
        )?;
        if rows == 0 {
            return Ok(());
        }
        let v = i32_of(vocab, "vocab")?;
        let mut b = self.stream.launch_builder(&self.kernels.argmax_rows);
        b.arg(out).arg(logits).arg(&v);
        // SAFETY: signature of kernels/argmax.cu; sizes checked.
        unsafe { b.launch(dims(geometry::per_row(rows))?) }
            .map(drop)
            .map_err(cuda_err("launch argmax_rows"))
    }
}

/// The head shape of an attention launch.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions per sequence in the cache.
    pub n_ctx: usize,
    /// A row sees only the last `window` positions (`None`: all of them).
    pub window: Option<usize>,
}

/// Lengths of an attention launch's buffers, checked before it.
struct AttentionIo {
    out_len: usize,
    q_len: usize,
    cache_lens: (usize, usize),
    index_lens: (usize, usize),
}

/// The scalar arguments every attention kernel takes, as kernel ints.
struct AttentionArgs {
    h: i32,
    kvh: i32,
    hd: i32,
    c: i32,
    /// 0: no window.
    w: i32,
    scale: f32,
}

/// Check an attention launch of `n_rows` rows against its buffers (`what`
/// names the kernel in the error), and give its scalar arguments, or
/// `None` when there is nothing to launch. `pairs`: the kernel reads
/// element pairs and needs an even head_dim.
fn attention_args(
    what: &str,
    io: &AttentionIo,
    n_rows: usize,
    heads: AttentionShape,
    pairs: bool,
) -> Result<Option<AttentionArgs>> {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
        n_ctx,
        window,
    } = heads;
    let q_dim = n_heads * head_dim;
    let rows = n_rows.saturating_mul(q_dim);
    ensure(io.out_len >= rows && io.q_len >= rows, || {
        format!(
            "{what}: out holds {}, q {} < {n_rows} x {q_dim}",
            io.out_len, io.q_len
        )
    })?;
    ensure(
        io.index_lens.0 >= n_rows && io.index_lens.1 >= n_rows,
        || {
            format!(
                "{what}: {} sequence and {} position indices for {n_rows} rows",
                io.index_lens.0, io.index_lens.1
            )
        },
    )?;
    ensure(n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads), || {
        format!("{what}: {n_heads} heads over {n_kv_heads} kv heads")
    })?;
    ensure(head_dim <= geometry::ATTENTION_MAX_HEAD_DIM, || {
        format!(
            "{what}: head_dim {head_dim} > {}",
            geometry::ATTENTION_MAX_HEAD_DIM
        )
    })?;
    ensure(!pairs || head_dim.is_multiple_of(2), || {
        format!("{what}: head_dim {head_dim} is odd (the kernel reads element pairs)")
    })?;
    let kv_dim = n_kv_heads * head_dim;
    let per_seq = n_ctx.saturating_mul(kv_dim);
    let (k_len, v_len) = io.cache_lens;
    ensure(
        per_seq > 0 && k_len == v_len && k_len % per_seq == 0,
        || {
            format!(
                "{what}: caches of {k_len} and {v_len} floats are not whole sequences of \
                 {n_ctx} x {kv_dim}"
            )
        },
    )?;
    if n_rows == 0 {
        return Ok(None);
    }
    Ok(Some(AttentionArgs {
        h: i32_of(n_heads, "heads")?,
        kvh: i32_of(n_kv_heads, "kv heads")?,
        hd: i32_of(head_dim, "head_dim")?,
        c: i32_of(n_ctx, "n_ctx")?,
        // A window past the context hides nothing.
        w: i32_of(window.unwrap_or(0).min(n_ctx), "window")?,
        scale: 1.0 / (head_dim as f32).sqrt(),
    }))
}
