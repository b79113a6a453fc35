//! Which instruction set the CPU kernels use, decided once per process.
//!
//! Holding an [`Isa`] is proof that the CPU supports it: the only ways to get
//! one check the CPU first, which is what makes calling the `unsafe`
//! `#[target_feature]` kernels behind it sound.
//!
//! `FLEA_CPU_ISA` (one of the names [`Isa::name`] gives: `scalar`, `avx2`,
//! `avxvnni`, `avx512vnni`, `neon`, `neon+dotprod`) overrides the choice of
//! [`Isa::best`], for benchmarks and for ruling a kernel set out. The
//! command line checks it up front with [`Isa::from_env`] and refuses a name
//! it does not know or one this CPU cannot run.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that overrides [`Isa::best`].
pub const ISA_ENV: &str = "FLEA_CPU_ISA";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(pub(crate) Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Plain Rust: the twin every SIMD path is tested against.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C (Haswell and later).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    /// AVX2 plus the 256-bit VEX form of VNNI (`vpdpbusd`/`vpdpwssd` on
    /// ymm: Alder Lake and later client cores, Zen 5) without AVX-512.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    AvxVnni,
    /// AVX2 plus AVX-512 F/BW/VL with VNNI (Ice Lake and Sapphire Rapids
    /// Xeons, Zen 4 and later): 512-bit integer dot products.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512Vnni,
    /// aarch64 NEON without the dot-product extension (Cortex-A53/A57/A72).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    /// aarch64 NEON with `sdot` (Cortex-A55/A75 and later, Jetson Orin).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    NeonDotprod,
}

/// Every kind, in the order [`Isa::available`] lists them.
const ALL: [Kind; 6] = [
    Kind::Scalar,
    Kind::Avx2,
    Kind::AvxVnni,
    Kind::Avx512Vnni,
    Kind::Neon,
    Kind::NeonDotprod,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Scalar => "scalar",
            Kind::Avx2 => "avx2",
            Kind::AvxVnni => "avxvnni",
            Kind::Avx512Vnni => "avx512vnni",
            Kind::Neon => "neon",
            Kind::NeonDotprod => "neon+dotprod",
        }
    }

    /// Whether this CPU runs the kind's kernels (every feature they are
    /// compiled with).
    fn detected(self) -> bool {
        match self {
            Kind::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kind::Avx2 => avx2_detected(),
            #[cfg(target_arch = "x86_64")]
            Kind::AvxVnni => avx2_detected() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Kind::Avx512Vnni => {
                avx2_detected()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            // NEON is part of the aarch64 baseline.
            #[cfg(target_arch = "aarch64")]
            Kind::Neon => true,
            #[cfg(target_arch = "aarch64")]
            Kind::NeonDotprod => std::arch::is_aarch64_feature_detected!("dotprod"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

/// The kernels of every x86 kind past scalar reuse the AVX2 quantizers and
/// float kernels, so each needs AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
fn avx2_detected() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

impl Isa {
    /// The scalar kernels, always available.
    pub const SCALAR: Isa = Isa(Kind::Scalar);

    /// The kernels to use, decided on first use and cached: the one
    /// `FLEA_CPU_ISA` names, else the fastest this CPU runs. A bad
    /// `FLEA_CPU_ISA` (which the command line refuses before getting here,
    /// see [`Isa::from_env`]) is logged and ignored.
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| match Isa::from_env() {
            Ok(Some(isa)) => isa,
            Ok(None) => Isa::fastest(),
            Err(e) => {
                log::warn!("{e}; using {}", Isa::fastest());
                Isa::fastest()
            }
        })
    }

    /// The fastest kernels this CPU runs, whatever `FLEA_CPU_ISA` says.
    pub fn fastest() -> Isa {
        *Isa::available().last().expect("scalar is always available")
    }

    /// Every kernel set this CPU runs, slowest (scalar) first. Tests and
    /// benchmarks compare them.
    pub fn available() -> Vec<Isa> {
        ALL.into_iter().filter(|k| k.detected()).map(Isa).collect()
    }

    /// The kernel set called `name` (as [`Isa::name`] writes it), if this
    /// CPU runs it. The error says whether the name is unknown or the CPU
    /// lacks the instructions, and lists what it has.
    pub fn from_name(name: &str) -> Result<Isa, String> {
        let here = || {
            Isa::available()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match ALL.into_iter().find(|k| k.name() == name) {
            Some(k) if k.detected() => Ok(Isa(k)),
            Some(_) => Err(format!(
                "{ISA_ENV}={name}: this CPU lacks the instructions of {name}; it runs {}",
                here()
            )),
            None => Err(format!(
                "{ISA_ENV}={name}: unknown instruction set; expected one of {} (this CPU runs {})",
                ALL.map(Kind::name).join(", "),
                here()
            )),
        }
    }

    /// The kernel set `FLEA_CPU_ISA` asks for: `None` when it is unset or
    /// empty, an error when it names an unknown set or one this CPU lacks.
    pub fn from_env() -> Result<Option<Isa>, String> {
        match std::env::var(ISA_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(format!("{ISA_ENV}={v:?}: not a valid name"))
            }
            Ok(v) if v.trim().is_empty() => Ok(None),
            Ok(v) => Isa::from_name(v.trim()).map(Some),
        }
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_are_refused() {
        for isa in Isa::available() {
            assert_eq!(Isa::from_name(isa.name()), Ok(isa));
        }
        let e = Isa::from_name("avx9000").unwrap_err();
        assert!(e.contains("unknown") && e.contains("avx2"), "{e}");
        for k in ALL {
            if !k.detected() {
                let e = Isa::from_name(k.name()).unwrap_err();
                assert!(e.contains("lacks"), "{e}");
            }
        }
        assert_eq!(Isa::available()[0], Isa::SCALAR);
        assert_eq!(Isa::fastest(), *Isa::available().last().unwrap());
    }
}
