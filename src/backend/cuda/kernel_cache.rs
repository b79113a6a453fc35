//! The kernels' sources as the binary carries them, and the on-disk cache
//! of what NVRTC compiles from them: where it lies, what a cached image is
//! called, reading and writing it. Pure `std` (plus the hash), compiled and
//! tested with or without the `cuda` feature; the NVRTC calls themselves
//! are in `nvrtc.rs`.
//!
//! Why: the fatbin build.rs embeds is made by one CUDA release for a list
//! of architectures. A driver older than that release cannot load it, and
//! a GPU newer than the list can only JIT its PTX if the driver knows that
//! PTX version. The binary therefore also carries every kernel source as
//! one self-contained translation unit ([`NVRTC_SOURCE`], written by
//! build.rs), and where the fatbin does not load and the machine has NVRTC
//! (JetPack and every CUDA install ship `libnvrtc`), the kernels are
//! compiled at start for the device's own architecture, once: the image is
//! kept in a cache file named after everything that shaped it.

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Every `kernels/*.cu`, with its local headers inlined, as NVRTC compiles
/// it (see `write_nvrtc_source` in build.rs).
pub static NVRTC_SOURCE: &str = include_str!(concat!(env!("OUT_DIR"), "/flea_kernels_nvrtc.cu"));

/// Where cached images may go, best first: `$XDG_CACHE_HOME/flea` (when
/// absolute, as the XDG spec asks), `$HOME/.cache/flea`, then
/// `<temp dir>/flea-kernels-<uid>` (a per-user folder, so one user's files
/// never decide what another loads).
pub fn cache_dirs(
    xdg_cache_home: Option<&OsStr>,
    home: Option<&OsStr>,
    temp: &Path,
    uid: u32,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(x) = xdg_cache_home.map(Path::new).filter(|p| p.is_absolute()) {
        dirs.push(x.join("flea"));
    }
    if let Some(h) = home.map(Path::new).filter(|p| p.is_absolute()) {
        let d = h.join(".cache").join("flea");
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs.push(temp.join(format!("flea-kernels-{uid}")));
    dirs
}

/// [`cache_dirs`] of this process's environment.
pub fn default_cache_dirs() -> Vec<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    cache_dirs(
        std::env::var_os("XDG_CACHE_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
        &std::env::temp_dir(),
        uid,
    )
}

/// What shaped a compiled image: the source, the compiler options, the
/// NVRTC release and the device's compute capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageKey<'a> {
    pub source: &'a str,
    pub options: &'a [String],
    /// NVRTC's (major, minor).
    pub nvrtc: (i32, i32),
    /// The device's compute capability (major, minor).
    pub arch: (i32, i32),
}

impl ImageKey<'_> {
    /// A 64-bit hash of source, options and NVRTC release.
    pub fn hash(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(self.source.as_bytes());
        for o in self.options {
            h.update(b"\0");
            h.update(o.as_bytes());
        }
        h.update(format!("\0nvrtc {}.{}", self.nvrtc.0, self.nvrtc.1).as_bytes());
        h.digest()
    }

    /// `kernels-<hash>-sm_<major><minor>.cubin`: a change to the kernels,
    /// the options or the NVRTC release gives a new name, so a stale image
    /// is never loaded (old ones are left for the user to delete).
    pub fn file_name(&self) -> String {
        format!(
            "kernels-{:016x}-sm_{}{}.cubin",
            self.hash(),
            self.arch.0,
            self.arch.1
        )
    }
}

/// The first cached image called `name` in `dirs`, with where it was.
/// Empty files (never written whole: see [`store`]) do not count.
pub fn read_cached(dirs: &[PathBuf], name: &str) -> Option<(PathBuf, Vec<u8>)> {
    dirs.iter().find_map(|d| {
        let p = d.join(name);
        std::fs::read(&p)
            .ok()
            .filter(|b| !b.is_empty())
            .map(|b| (p, b))
    })
}

/// Write `bytes` as `name` in the first of `dirs` that takes it: written to
/// a temporary file in the same folder, then renamed, so a reader never
/// sees a partial image (and two processes compiling at once both end with
/// a whole one). Returns the path, or every folder's reason.
pub fn store(dirs: &[PathBuf], name: &str, bytes: &[u8]) -> Result<PathBuf, String> {
    let mut why = Vec::new();
    for d in dirs {
        let path = d.join(name);
        let tmp = d.join(format!("{name}.{}.partial", std::process::id()));
        let attempt = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(d)?;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        match attempt {
            Ok(()) => return Ok(path),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                why.push(format!("{}: {e}", d.display()));
            }
        }
    }
    Err(why.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(source: &'a str, options: &'a [String]) -> ImageKey<'a> {
        ImageKey {
            source,
            options,
            nvrtc: (12, 6),
            arch: (8, 7),
        }
    }

    #[test]
    fn cache_dirs_follow_xdg_then_home_then_temp() {
        let tmp = Path::new("/tmp");
        let dirs = cache_dirs(
            Some(OsStr::new("/x/cache")),
            Some(OsStr::new("/home/u")),
            tmp,
            1000,
        );
        assert_eq!(
            dirs,
            [
                PathBuf::from("/x/cache/flea"),
                PathBuf::from("/home/u/.cache/flea"),
                PathBuf::from("/tmp/flea-kernels-1000"),
            ]
        );
        // A relative XDG_CACHE_HOME is ignored (XDG spec); no HOME either.
        let dirs = cache_dirs(Some(OsStr::new("rel")), None, tmp, 7);
        assert_eq!(dirs, [PathBuf::from("/tmp/flea-kernels-7")]);
        // XDG_CACHE_HOME = $HOME/.cache: listed once.
        let dirs = cache_dirs(
            Some(OsStr::new("/home/u/.cache")),
            Some(OsStr::new("/home/u")),
            tmp,
            7,
        );
        assert_eq!(dirs.len(), 2);
    }

    #[test]
    fn the_image_name_changes_with_everything_that_shapes_the_image() {
        let opts = vec!["--gpu-architecture=sm_87".to_string()];
        let base = key("kernel", &opts);
        let name = base.file_name();
        assert!(
            name.starts_with("kernels-") && name.ends_with("-sm_87.cubin"),
            "{name}"
        );
        assert_eq!(name, key("kernel", &opts).file_name(), "stable");
        let other_opts = vec!["--gpu-architecture=sm_86".to_string()];
        let variants = [
            key("kernel2", &opts),
            key("kernel", &other_opts),
            ImageKey {
                nvrtc: (12, 8),
                ..base.clone()
            },
            ImageKey {
                arch: (9, 0),
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.file_name(), name, "{v:?}");
        }
    }

    #[test]
    fn store_then_read_and_fall_back_past_an_unwritable_folder() {
        let root = std::env::temp_dir().join(format!("flea-kcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        // A folder that cannot be made: its parent is a file.
        let blocker = root.join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let dirs = vec![blocker.join("flea"), root.join("second")];
        assert_eq!(read_cached(&dirs, "k.cubin"), None);
        let at = store(&dirs, "k.cubin", b"image").unwrap();
        assert_eq!(at, root.join("second/k.cubin"));
        assert_eq!(
            read_cached(&dirs, "k.cubin"),
            Some((at.clone(), b"image".to_vec()))
        );
        // No partial file left behind.
        let left: Vec<_> = std::fs::read_dir(root.join("second"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, [std::ffi::OsString::from("k.cubin")]);
        // An empty file is not an image.
        std::fs::write(&at, b"").unwrap();
        assert_eq!(read_cached(&dirs, "k.cubin"), None);
        // Nowhere to write: every folder's reason.
        let e = store(&dirs[..1], "k.cubin", b"image").unwrap_err();
        assert!(e.contains("file/flea"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// The carried source is one translation unit: every kernel file, no
    /// local include left (NVRTC has no files to read), and no C library
    /// or CUDA header needed under NVRTC.
    #[test]
    fn the_carried_source_is_self_contained() {
        let src = NVRTC_SOURCE;
        let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        for e in std::fs::read_dir(&kernels).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".cu") || name.ends_with(".cuh") || name == "geometry.h" {
                assert!(
                    src.contains(&format!("// ---- kernels/{name}\n")),
                    "{name} is not in the NVRTC source"
                );
            }
        }
        assert!(!src.contains("#include \""), "a local include was left");
        assert!(!src.contains("#pragma once"));
        assert!(src.contains("extern \"C\""));
        // Under NVRTC the only includes left are in the host build's
        // branches, after an #else.
        let mut branches: Vec<bool> = Vec::new(); // per open #if: in its #else
        for line in src.lines().map(str::trim_start) {
            if line.starts_with("#if") {
                branches.push(false);
            } else if line.starts_with("#else") {
                *branches.last_mut().expect("#else without #if") = true;
            } else if line.starts_with("#endif") {
                branches.pop().expect("#endif without #if");
            } else if line.starts_with("#include") {
                assert!(branches.contains(&true), "include outside an #else: {line}");
            }
        }
        assert!(branches.is_empty(), "unbalanced #if");
    }
}
