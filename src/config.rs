//! The TOML configuration: memory budget, device, I/O, generation defaults
//! and pipeline settings. Unknown keys and bad values are errors that name
//! the key and the file. Command-line flags override what a file says.

use crate::backend::Feed;
use crate::error::{Error, Result};
use crate::kv_cache::KvType;
use crate::kv_disk::KvOffload;
use crate::limits;
use serde::Deserialize;
use std::fmt;
use std::path::Path;

/// A byte count written as `"6GiB"`, `"512 MiB"`, `"1000B"` or a bare integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> std::result::Result<ByteSize, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let value: f64 = num
            .parse()
            .map_err(|_| format!("expected a size like \"6GiB\", found {text:?}"))?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1 << 10,
            "MiB" | "M" | "MB" => 1 << 20,
            "GiB" | "G" | "GB" => 1 << 30,
            "TiB" | "T" | "TB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} in {text:?} (use B, KiB, MiB, GiB)"
                ))
            }
        };
        Ok(ByteSize((value * scale as f64).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        const UNITS: [(&str, f64); 4] = [
            ("TiB", (1u64 << 40) as f64),
            ("GiB", (1u64 << 30) as f64),
            ("MiB", (1u64 << 20) as f64),
            ("KiB", (1u64 << 10) as f64),
        ];
        for (name, size) in UNITS {
            if b >= size {
                return write!(f, "{:.2} {name}", b / size);
            }
        }
        write!(f, "{} B", self.0)
    }
}

/// The memory budget: a fixed size, or a share of the model file's size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(u64),
    PercentOfModel(f64),
}

impl Budget {
    pub fn parse(text: &str) -> std::result::Result<Budget, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("expected a percentage like \"40%\", found {text:?}"))?;
            if !(v > 0.0 && v.is_finite()) {
                return Err(format!("expected a positive percentage, found {text:?}"));
            }
            return Ok(Budget::PercentOfModel(v));
        }
        ByteSize::parse(t).map(|b| Budget::Bytes(b.0))
    }

    /// The budget in bytes for a model file of `model_bytes`.
    pub fn resolve(self, model_bytes: u64) -> u64 {
        match self {
            Budget::Bytes(b) => b,
            Budget::PercentOfModel(p) => (model_bytes as f64 * p / 100.0) as u64,
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Bytes(b) => write!(f, "{}", ByteSize(*b)),
            Budget::PercentOfModel(p) => write!(f, "{p}% of the model file"),
        }
    }
}

impl<'de> Deserialize<'de> for Budget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(b) => Ok(Budget::Bytes(b)),
            Raw::Text(t) => Budget::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The GPU when a driver and device are present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Everything the run may allocate for weights, KV cache and scratch.
    pub budget: Budget,
    /// Element type of the KV cache: "f16" (half the bytes) or "f32".
    pub kv_type: KvType,
    /// Where the KV cache lives: "auto" (on disk only when it does not fit
    /// the budget), "off" (always RAM) or "on" (always disk).
    pub kv_offload: KvOffload,
    /// Directory of the KV file when offloaded; "" = the system temp dir.
    pub kv_dir: String,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            budget: Budget::Bytes(6 << 30),
            kv_type: KvType::default(),
            kv_offload: KvOffload::default(),
            kv_dir: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceConfig {
    pub backend: Backend,
    /// CUDA only: how streamed layers reach the GPU.
    pub buffer: Feed,
    /// CPU threads; 0 means one per physical core.
    pub threads: usize,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            backend: Backend::Auto,
            buffer: Feed::Device,
            threads: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoConfig {
    /// Read streamed layers with O_DIRECT so they never fill the page cache.
    pub direct: bool,
    /// How often a failed read is retried before the run fails.
    pub retries: u32,
    /// The first retry waits this long; each later one waits twice as long.
    pub retry_backoff_ms: u64,
    /// Check every layer read against the model's `.sums` sidecar (written
    /// by `flea checksum`); a mismatch fails the run naming the layer.
    pub verify: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        IoConfig {
            direct: true,
            retries: 4,
            retry_backoff_ms: 10,
            verify: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: u64,
    /// KV cache positions; 0 means min(the model's context, 2048).
    pub context: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        let s = crate::generate::sampler::SamplerConfig::default();
        GenerationConfig {
            max_tokens: 128,
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
            min_p: s.min_p,
            repeat_penalty: s.repeat_penalty,
            seed: s.seed,
            context: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Positions per forward pass while reading a prompt.
    pub prefill_chunk: usize,
    /// Read the next streamed layer while the current one computes.
    pub prefetch: bool,
    /// Sequences decoded together: every streamed layer serves all of them
    /// in one read. Each costs a KV cache.
    pub batch: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            prefill_chunk: 64,
            prefetch: true,
            batch: 1,
        }
    }
}

/// The whole configuration. Every section and key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub memory: MemoryConfig,
    pub device: DeviceConfig,
    pub io: IoConfig,
    pub generation: GenerationConfig,
    pub pipeline: PipelineConfig,
}

impl Config {
    /// Parse TOML text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config> {
        let config: Config = toml::from_str(text)
            .map_err(|e| Error::config(format!("{source}: {}", e.to_string().trim_end())))?;
        config.validate(source)?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("{}: cannot read config file: {e}", path.display()))
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    fn validate(&self, source: &str) -> Result<()> {
        let bad = |key: &str, expected: &str, found: String| {
            Err(Error::config(format!(
                "{source}: key {key}: expected {expected}, found {found}"
            )))
        };
        let in_range = |key: &str, value: usize, min: usize, max: usize| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                bad(key, &format!("{min}..={max}"), value.to_string())
            }
        };
        in_range(
            "pipeline.prefill_chunk",
            self.pipeline.prefill_chunk,
            1,
            limits::MAX_CHUNK,
        )?;
        in_range("pipeline.batch", self.pipeline.batch, 1, limits::MAX_BATCH)?;
        // 0 means "choose for me" for these two.
        in_range(
            "device.threads",
            self.device.threads,
            0,
            limits::MAX_THREADS,
        )?;
        in_range(
            "generation.context",
            self.generation.context,
            0,
            limits::MAX_CONTEXT,
        )?;
        if self.io.retries > 30 {
            return bad("io.retries", "at most 30", self.io.retries.to_string());
        }
        if let Budget::Bytes(0) = self.memory.budget {
            return bad("memory.budget", "a positive size", "0".into());
        }
        let g = &self.generation;
        if !(g.temperature >= 0.0 && g.temperature.is_finite()) {
            return bad(
                "generation.temperature",
                "a number >= 0",
                g.temperature.to_string(),
            );
        }
        if !(g.top_p > 0.0 && g.top_p <= 1.0) {
            return bad(
                "generation.top_p",
                "a number in (0, 1]",
                g.top_p.to_string(),
            );
        }
        if !(0.0..=1.0).contains(&g.min_p) {
            return bad(
                "generation.min_p",
                "a number in [0, 1]",
                g.min_p.to_string(),
            );
        }
        if !(g.repeat_penalty > 0.0 && g.repeat_penalty.is_finite()) {
            return bad(
                "generation.repeat_penalty",
                "a number > 0",
                g.repeat_penalty.to_string(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("6GiB").unwrap().0, 6 << 30);
        assert_eq!(ByteSize::parse("512 MiB").unwrap().0, 512 << 20);
        assert_eq!(ByteSize::parse("1.5KiB").unwrap().0, 1536);
        assert_eq!(ByteSize::parse("100B").unwrap().0, 100);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("6 parsecs")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn budgets() {
        assert_eq!(Budget::parse("40%").unwrap().resolve(1000), 400);
        assert_eq!(Budget::parse("1KiB").unwrap().resolve(1), 1024);
        assert!(Budget::parse("-5%").is_err());
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"
            [memory]
            budget = "2GiB"
            [device]
            backend = "cpu"
            threads = 2
            [io]
            direct = false
            retries = 3
            retry_backoff_ms = 5
            [generation]
            max_tokens = 16
            temperature = 0.0
            seed = 9
            context = 512
            [pipeline]
            prefill_chunk = 32
            prefetch = false
            "#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.memory.budget, Budget::Bytes(2 << 30));
        assert_eq!(c.device.backend, Backend::Cpu);
        assert!(!c.io.direct && !c.pipeline.prefetch);
        assert_eq!(c.generation.context, 512);
        assert_eq!(c.generation.top_k, 40, "unset keys keep defaults");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let e = Config::parse("[memory]\nbudgit = \"1GiB\"\n", "board.toml").unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Config);
        assert!(
            e.message.contains("board.toml") && e.message.contains("budgit"),
            "{e}"
        );
        let e = Config::parse("[gpu]\n", "board.toml").unwrap_err();
        assert!(e.message.contains("gpu"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::parse("[memory]\nbudget = \"6 parsecs\"\n", "b.toml").unwrap_err();
        assert!(
            e.message.contains("b.toml") && e.message.contains("unknown size unit"),
            "{e}"
        );
        let e = Config::parse("[device]\nbackend = \"tpu\"\n", "b.toml").unwrap_err();
        assert!(e.message.contains("tpu"), "{e}");
        let e = Config::parse("[generation]\ntop_p = 2.0\n", "b.toml").unwrap_err();
        assert!(e.message.contains("generation.top_p"), "{e}");
        let e = Config::parse("[io]\nretries = \"many\"\n", "b.toml").unwrap_err();
        assert!(e.message.contains("retries"), "{e}");
    }

    #[test]
    fn missing_file_is_a_config_error() {
        let e = Config::load(Path::new("/nonexistent/flea.toml")).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Config);
        assert!(e.message.contains("/nonexistent/flea.toml"));
    }
}
