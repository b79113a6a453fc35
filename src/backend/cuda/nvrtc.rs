//! Compiling the carried kernel sources with NVRTC for the device at hand,
//! when the embedded fatbin does not load (see `kernel_cache.rs` for why
//! and for the cache). Through cudarc's `nvrtc` bindings, loaded at run
//! time like the driver: a machine without `libnvrtc` just does not get
//! this fallback, and the load error says so.
//!
//! Output: a cubin (SASS) for the device's exact architecture, not PTX.
//! PTX written by an NVRTC newer than the driver is refused like the
//! fatbin's own PTX (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`); SASS needs no
//! JIT, and within a CUDA major release loads on any driver of it.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::time::Instant;

use cudarc::nvrtc::sys;

use super::kernel_cache::{self, ImageKey, NVRTC_SOURCE};

/// Where to look for `libnvrtc` when the loader does not find it by name:
/// `$FLEA_NVRTC_LIB` (a file), then the library folders of `$CUDA_HOME`,
/// `$CUDA_PATH` and `/usr/local/cuda`.
fn candidate_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("FLEA_NVRTC_LIB").filter(|p| !p.is_empty()) {
        v.push(PathBuf::from(p));
    }
    let mut roots: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(|k| std::env::var_os(k).filter(|p| !p.is_empty()))
        .map(PathBuf::from)
        .collect();
    roots.push(PathBuf::from("/usr/local/cuda"));
    for root in roots {
        for lib in [
            "lib64",
            "lib",
            "targets/x86_64-linux/lib",
            "targets/aarch64-linux/lib",
            "targets/sbsa-linux/lib",
        ] {
            // cudarc (built for CUDA 12) opens these names; a library
            // loaded from a path answers to its soname, libnvrtc.so.12.
            for name in ["libnvrtc.so.12", "libnvrtc.so"] {
                v.push(root.join(lib).join(name));
            }
        }
    }
    v
}

/// Whether NVRTC can be used, loading it from [`candidate_paths`] first if
/// the loader's search does not find it. `Err` says where it looked.
pub fn available() -> Result<(), String> {
    // SAFETY: dlopen attempts by name; nothing is called.
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    let mut tried = Vec::new();
    for p in candidate_paths() {
        if !p.is_file() {
            continue;
        }
        tried.push(p.display().to_string());
        let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: loads a shared library by path and keeps it loaded for
        // the life of the process (the handle is deliberately not closed:
        // cudarc's own dlopen by soname then finds this copy).
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        // SAFETY: as above.
        if !handle.is_null() && unsafe { sys::is_culib_present() } {
            return Ok(());
        }
    }
    Err(format!(
        "libnvrtc not found (looked for libnvrtc.so.12 on the library path{}{}; \
         install the CUDA runtime compiler: JetPack or a CUDA toolkit has it, or \
         `pip install nvidia-cuda-nvrtc-cu12` and set FLEA_NVRTC_LIB to its libnvrtc.so.12)",
        if tried.is_empty() { "" } else { ", and " },
        tried.join(", ")
    ))
}

/// NVRTC's release, (major, minor).
pub fn version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: out-parameter call into the loaded library.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    check(r, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<(), String> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {r:?}"))
    }
}

/// The options the kernels are compiled with for compute capability
/// `arch`: what build.rs gives nvcc that matters to device code.
pub fn options(arch: (i32, i32)) -> Vec<String> {
    vec![
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "--std=c++17".into(),
        "-DFLEA_NVRTC=1".into(),
    ]
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram, destroyed once.
        let _ = unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

impl Program {
    fn log(&self) -> String {
        let mut size = 0usize;
        // SAFETY: out-parameter call on a live program.
        if unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }
            != sys::nvrtcResult::NVRTC_SUCCESS
            || size == 0
        {
            return String::new();
        }
        let mut buf = vec![0 as c_char; size];
        // SAFETY: `buf` holds the `size` bytes NVRTC said the log takes.
        if unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr()) }
            != sys::nvrtcResult::NVRTC_SUCCESS
        {
            return String::new();
        }
        // SAFETY: NVRTC writes a NUL-terminated string into `buf`.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .trim()
            .to_string()
    }
}

/// Compile `source` with `options` into a cubin. On failure the error has
/// the start of NVRTC's log.
pub fn compile(source: &str, options: &[String]) -> Result<Vec<u8>, String> {
    let src = CString::new(source).map_err(|_| "kernel source contains a NUL byte".to_string())?;
    let name = c"flea_kernels.cu";
    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no headers passed.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            src.as_ptr(),
            name.as_ptr(),
            0,
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    check(r, "nvrtcCreateProgram")?;
    let prog = Program(raw);
    let opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).map_err(|_| format!("option {o:?} contains a NUL")))
        .collect::<Result<_, _>>()?;
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    // SAFETY: `ptrs` points at `opts`, alive across the call.
    let r = unsafe { sys::nvrtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        let log = prog.log();
        let head: String = log.lines().take(12).collect::<Vec<_>>().join("\n");
        return Err(format!(
            "compilation failed ({r:?}, options {}): {head}",
            options.join(" ")
        ));
    }
    let mut size = 0usize;
    // SAFETY: out-parameter call on a compiled program.
    check(
        unsafe { sys::nvrtcGetCUBINSize(prog.0, &mut size) },
        "nvrtcGetCUBINSize",
    )?;
    if size == 0 {
        return Err("NVRTC produced an empty cubin".into());
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` holds the `size` bytes NVRTC said it takes.
    check(
        unsafe { sys::nvrtcGetCUBIN(prog.0, cubin.as_mut_ptr().cast()) },
        "nvrtcGetCUBIN",
    )?;
    Ok(cubin)
}

/// A kernel image from NVRTC, and how it was had.
pub struct Compiled {
    pub image: Vec<u8>,
    /// "NVRTC 12.6, sm_87, compiled in 41.2 s, cached at PATH" or
    /// "NVRTC 12.6, sm_87, from the cache PATH".
    pub how: String,
    /// The cache file it came from or went to, if any.
    pub cached_at: Option<PathBuf>,
    /// Whether it was read from the cache (a load failure should then
    /// retry with a fresh compile).
    pub from_cache: bool,
}

/// The carried kernels for compute capability `arch`: from the cache when
/// there, else compiled (and cached; a cache that cannot be written only
/// costs a compile at the next start). `fresh` skips the cache read.
pub fn kernels_for(arch: (i32, i32), fresh: bool) -> Result<Compiled, String> {
    available()?;
    let ver = version()?;
    let opts = options(arch);
    let key = ImageKey {
        source: NVRTC_SOURCE,
        options: &opts,
        nvrtc: ver,
        arch,
    };
    let name = key.file_name();
    let dirs = kernel_cache::default_cache_dirs();
    let what = format!("NVRTC {}.{}, sm_{}{}", ver.0, ver.1, arch.0, arch.1);
    if !fresh {
        if let Some((path, image)) = kernel_cache::read_cached(&dirs, &name) {
            return Ok(Compiled {
                image,
                how: format!("{what}, from the cache {}", path.display()),
                cached_at: Some(path),
                from_cache: true,
            });
        }
    }
    // Debug, not info: where this fails, `auto` falls back to the CPU with
    // one log line, its own; where it works, the line that says so gives
    // the compile time.
    log::debug!(
        "CUDA: compiling the kernels with {what} (once; the result is cached under {})",
        dirs.first()
            .map_or_else(String::new, |d| d.display().to_string())
    );
    let start = Instant::now();
    let image = compile(NVRTC_SOURCE, &opts).map_err(|e| format!("{what}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let (how, cached_at) = match kernel_cache::store(&dirs, &name, &image) {
        Ok(path) => (
            format!(
                "{what}, compiled in {secs:.1} s, cached at {}",
                path.display()
            ),
            Some(path),
        ),
        Err(why) => {
            log::warn!(
                "CUDA: cannot cache the NVRTC kernels ({why}); they are compiled at every start"
            );
            (format!("{what}, compiled in {secs:.1} s, not cached"), None)
        }
    };
    Ok(Compiled {
        image,
        how,
        cached_at,
        from_cache: false,
    })
}
