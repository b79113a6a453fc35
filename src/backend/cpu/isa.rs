//! Which instruction set the CPU kernels use, decided once per process.
//!
//! Holding an [`Isa`] is proof that the CPU supports it: the only ways to get
//! one check the CPU first, which is what makes calling the `unsafe`
//! `#[target_feature]` kernels behind it sound.

use std::fmt;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(pub(crate) Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Plain Rust: the twin every SIMD path is tested against.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C (Haswell and later).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// aarch64 NEON without the dot-product extension (Cortex-A53/A57/A72).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    /// aarch64 NEON with `sdot` (Cortex-A55/A75 and later, Jetson Orin).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    NeonDotprod,
}

impl Isa {
    /// The scalar kernels, always available.
    pub const SCALAR: Isa = Isa(Kind::Scalar);

    /// The fastest kernels this CPU runs, detected on first use and cached.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().expect("scalar is always available"))
    }

    /// Every kernel set this CPU runs, slowest (scalar) first. Tests and
    /// benchmarks compare them.
    pub fn available() -> Vec<Isa> {
        let mut all = vec![Isa::SCALAR];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
        {
            all.push(Isa(Kind::Avx2));
        }
        #[cfg(target_arch = "aarch64")]
        {
            // NEON is part of the aarch64 baseline.
            all.push(Isa(Kind::Neon));
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                all.push(Isa(Kind::NeonDotprod));
            }
        }
        all
    }

    pub fn name(self) -> &'static str {
        match self.0 {
            Kind::Scalar => "scalar",
            Kind::Avx2 => "avx2",
            Kind::Neon => "neon",
            Kind::NeonDotprod => "neon+dotprod",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
