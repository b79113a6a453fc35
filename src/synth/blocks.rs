//! Random but valid blocks of every format: per-tensor seeded generators,
//! block headers with finite scales sized so weights have the wanted
//! spread, and the writer that streams a tensor's bytes a few MiB at a time.

use super::{Fill, CHUNK_BYTES, NORM_NOISE};
use crate::gguf::TensorInfo;
use crate::quant::{q3_k, q4_k, GgmlType};
use half::f16;
use std::io::{self, Write};

/// wyrand: fast, statistically fine for weights, and seedable per tensor.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    #[inline]
    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform integer in lo..=hi.
    pub(super) fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i32
    }

    pub(super) fn sign(&mut self) -> i32 {
        if self.next_u64() & 1 == 0 {
            1
        } else {
            -1
        }
    }

    pub(super) fn fill(&mut self, bytes: &mut [u8]) {
        let mut chunks = bytes.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// splitmix64's finalizer, to derive independent per-tensor seeds (so a
/// tensor's bytes do not depend on how the others were generated).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(super) fn tensor_seed(seed: u64, index: u64) -> u64 {
    mix(seed ^ mix(index))
}

/// Root mean square of the integers lo..=hi, each equally likely.
fn rms(lo: i32, hi: i32) -> f32 {
    let n = (hi - lo + 1) as f64;
    let sum: f64 = (lo..=hi).map(|v| f64::from(v * v)).sum();
    (sum / n).sqrt() as f32
}

/// Standard deviation of the integers lo..=hi, each equally likely.
fn std_dev(lo: i32, hi: i32) -> f32 {
    let n = f64::from(hi - lo + 1);
    (((n * n - 1.0) / 12.0).sqrt()) as f32
}

/// Random block factors vary this much around the target, so blocks differ.
fn jitter(rng: &mut Rng) -> f32 {
    0.9 + 0.2 * rng.unit()
}

/// Distinct block headers (factors and sub-block scales) per tensor; each
/// block takes one at random, the quants are fresh random bits.
const HEADERS: usize = 256;

/// How to make a block: random bytes with a header from the table at
/// `header_at`.
struct BlockGen {
    block_bytes: usize,
    header_at: usize,
    header_len: usize,
    headers: Vec<u8>,
}

impl BlockGen {
    /// Headers for `ty` giving weights of standard deviation `sigma`.
    fn new(ty: GgmlType, sigma: f32, rng: &mut Rng) -> BlockGen {
        use crate::quant::{iq4_nl, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0};
        let (block_bytes, header_at, header_len) = match ty {
            GgmlType::Q8_0 => (q8_0::BLOCK_BYTES, 0, 2),
            GgmlType::Q4_0 => (q4_0::BLOCK_BYTES, 0, 2),
            GgmlType::Q5_0 => (q5_0::BLOCK_BYTES, 0, 2),
            GgmlType::IQ4NL => (iq4_nl::BLOCK_BYTES, 0, 2),
            GgmlType::Q4_1 => (q4_1::BLOCK_BYTES, 0, 4),
            GgmlType::Q5_1 => (q5_1::BLOCK_BYTES, 0, 4),
            GgmlType::Q4K => (q4_k::BLOCK_BYTES, 0, 16),
            GgmlType::Q5K => (q5_k::BLOCK_BYTES, 0, 16),
            GgmlType::Q3K => (q3_k::BLOCK_BYTES, 96, 14),
            GgmlType::Q6K => (q6_k::BLOCK_BYTES, 192, 18),
            other => unreachable!("synth does not generate {other} blocks"),
        };
        let mut headers = Vec::with_capacity(HEADERS * header_len);
        for _ in 0..HEADERS {
            let h = match ty {
                GgmlType::Q8_0 => q8_0_header(sigma, rng),
                GgmlType::Q4_0 => signed_scale_header(sigma, rms(-8, 7), rng),
                GgmlType::Q5_0 => signed_scale_header(sigma, rms(-16, 15), rng),
                GgmlType::IQ4NL => signed_scale_header(sigma, iq4_nl_rms(), rng),
                GgmlType::Q4_1 => scale_min_header(sigma, 15, rng),
                GgmlType::Q5_1 => scale_min_header(sigma, 31, rng),
                GgmlType::Q4K => q4_5_k_header(sigma, 15, rng),
                GgmlType::Q5K => q4_5_k_header(sigma, 31, rng),
                GgmlType::Q3K => q3_k_header(sigma, rng),
                _ => q6_k_header(sigma, rng),
            };
            debug_assert_eq!(h.len(), header_len);
            headers.extend_from_slice(&h);
        }
        BlockGen {
            block_bytes,
            header_at,
            header_len,
            headers,
        }
    }

    fn fill(&self, blocks: &mut [u8], rng: &mut Rng) {
        rng.fill(blocks);
        for block in blocks.chunks_exact_mut(self.block_bytes) {
            let i = (rng.next_u64() as usize % HEADERS) * self.header_len;
            block[self.header_at..self.header_at + self.header_len]
                .copy_from_slice(&self.headers[i..i + self.header_len]);
        }
    }
}

/// Q8_0: weight = d * q with q uniform over the i8 range.
fn q8_0_header(sigma: f32, rng: &mut Rng) -> Vec<u8> {
    let d = sigma / rms(-128, 127) * jitter(rng);
    f16::from_f32(d).to_le_bytes().to_vec()
}

/// Q4_0, Q5_0, IQ4_NL: weight = d * v, v a level of the format, all
/// equally likely, of root mean square `v_rms`. Their levels are not
/// centred (Q4_0's mean -0.5, IQ4_NL's -5.875), so `d` takes either sign,
/// and the blocks' means cancel across a tensor.
fn signed_scale_header(sigma: f32, v_rms: f32, rng: &mut Rng) -> Vec<u8> {
    let d = rng.sign() as f32 * sigma / v_rms * jitter(rng);
    f16::from_f32(d).to_le_bytes().to_vec()
}

/// Root mean square of IQ4_NL's sixteen levels.
fn iq4_nl_rms() -> f32 {
    let levels = crate::quant::iq4_nl::LEVELS;
    let sum: f64 = levels.iter().map(|&v| f64::from(v).powi(2)).sum();
    (sum / levels.len() as f64).sqrt() as f32
}

/// Q4_1 (`q_max` 15) and Q5_1 (`q_max` 31): weight = d * q + m, q uniform
/// over 0..=q_max; m = -d * q_max / 2 centres the weights.
fn scale_min_header(sigma: f32, q_max: i32, rng: &mut Rng) -> Vec<u8> {
    let d = f16::from_f32(sigma / std_dev(0, q_max) * jitter(rng));
    let m = f16::from_f32(-d.to_f32() * q_max as f32 / 2.0);
    let mut h = d.to_le_bytes().to_vec();
    h.extend_from_slice(&m.to_le_bytes());
    h
}

/// Q4_K (`q_max` 15) and Q5_K (`q_max` 31): weight = d*sc*q - dmin*m.
/// The min is set to cancel the quants' mean, so weights are centred:
/// dmin = d * (q_max + 1) / 2 and m = sc * q_max / (q_max + 1), rounded,
/// which is below 64 for scales up to 63.
fn q4_5_k_header(sigma: f32, q_max: i32, rng: &mut Rng) -> Vec<u8> {
    let (sc_lo, sc_hi) = (32, 63);
    let d = f16::from_f32(sigma / (rms(sc_lo, sc_hi) * std_dev(0, q_max)) * jitter(rng));
    // Exact in f16: a power-of-two multiple.
    let dmin = f16::from_f32(d.to_f32() * ((q_max + 1) / 2) as f32);
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        let s = rng.range(sc_lo, sc_hi);
        sc[j] = s as u8;
        m[j] = ((s * q_max) as f32 / (q_max + 1) as f32).round() as u8;
    }
    let mut h = Vec::with_capacity(16);
    h.extend_from_slice(&d.to_le_bytes());
    h.extend_from_slice(&dmin.to_le_bytes());
    h.extend_from_slice(&q4_k::pack_scales(&sc, &m));
    h
}

/// Q3_K: weight = d * (s - 32) * q, q in -4..=3. Scales of either sign
/// cancel the quants' -0.5 mean across sub-blocks.
fn q3_k_header(sigma: f32, rng: &mut Rng) -> Vec<u8> {
    let (mag_lo, mag_hi) = (16, 31);
    let d = f16::from_f32(sigma / (rms(mag_lo, mag_hi) * rms(-4, 3)) * jitter(rng));
    let scales: [u8; 16] =
        std::array::from_fn(|_| (32 + rng.sign() * rng.range(mag_lo, mag_hi)) as u8);
    let mut h = q3_k::pack_scales(&scales).to_vec();
    h.extend_from_slice(&d.to_le_bytes());
    h
}

/// Q6_K: weight = d * sc * (q - 32), q in 0..=63, i8 scales of either sign.
fn q6_k_header(sigma: f32, rng: &mut Rng) -> Vec<u8> {
    let (mag_lo, mag_hi) = (32, 63);
    let d = f16::from_f32(sigma / (rms(mag_lo, mag_hi) * rms(-32, 31)) * jitter(rng));
    let mut h: Vec<u8> = (0..16)
        .map(|_| (rng.sign() * rng.range(mag_lo, mag_hi)) as i8 as u8)
        .collect();
    h.extend_from_slice(&d.to_le_bytes());
    h
}

/// Write `t`'s bytes, generated in chunks of whole blocks, calling
/// `report(bytes done)` after each chunk.
pub(super) fn write_tensor(
    t: &TensorInfo,
    fill: Fill,
    mut rng: Rng,
    buf: &mut Vec<u8>,
    out: &mut dyn Write,
    report: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let size = t.size_bytes as usize;
    let (_, unit) = t
        .ggml_type
        .block_layout()
        .expect("synth only plans sized types");
    let chunk = (CHUNK_BYTES / unit).max(1) * unit;
    let producer = match (fill, t.ggml_type) {
        (Fill::Norm, GgmlType::F32) => Producer::Norm,
        (Fill::Weights { sigma }, GgmlType::F16) => Producer::F16(f16_table(sigma)),
        (Fill::Weights { sigma }, ty) => Producer::Blocks(BlockGen::new(ty, sigma, &mut rng)),
        (Fill::Norm, ty) => unreachable!("norms are F32, not {ty}"),
    };
    let mut done = 0;
    while done < size {
        let n = chunk.min(size - done);
        buf.resize(n, 0);
        producer.fill(&mut buf[..n], &mut rng);
        out.write_all(&buf[..n])?;
        done += n;
        report(done as u64);
    }
    Ok(())
}

/// Makes the bytes of one tensor, chunk by chunk.
enum Producer {
    Norm,
    /// Values drawn from this table of F16 levels.
    F16(Vec<[u8; 2]>),
    Blocks(BlockGen),
}

impl Producer {
    fn fill(&self, bytes: &mut [u8], rng: &mut Rng) {
        match self {
            Producer::Norm => {
                for v in bytes.chunks_exact_mut(4) {
                    let w = 1.0 + NORM_NOISE * (2.0 * rng.unit() - 1.0);
                    v.copy_from_slice(&w.to_le_bytes());
                }
            }
            Producer::F16(table) => {
                // Four 16-bit draws from each random word.
                for group in bytes.chunks_mut(8) {
                    let r = rng.next_u64();
                    for (k, v) in group.chunks_exact_mut(2).enumerate() {
                        let i = (r >> (16 * k)) as usize % F16_LEVELS;
                        v.copy_from_slice(&table[i]);
                    }
                }
            }
            Producer::Blocks(gen) => gen.fill(bytes, rng),
        }
    }
}

/// Distinct values an F16 weight takes (a power of two, for cheap indexing).
const F16_LEVELS: usize = 4096;

/// Evenly spaced levels of a uniform distribution with std `sigma`.
fn f16_table(sigma: f32) -> Vec<[u8; 2]> {
    let half_width = sigma * 3f32.sqrt();
    (0..F16_LEVELS)
        .map(|i| {
            let u = (2 * i + 1) as f32 / F16_LEVELS as f32 - 1.0;
            f16::from_f32(half_width * u).to_le_bytes()
        })
        .collect()
}
