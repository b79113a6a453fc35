//! The KV cache on disk (`[memory] kv_offload`): the same logits as the
//! cache in RAM, bit for bit, through chunked prefill and batched decode
//! over contexts of several blocks (a block is at most a quarter of a kv
//! head's context, so 512 positions are read in blocks of 128); nothing
//! left in the KV directory; the planner puts it on disk only when the RAM
//! cache does not fit, and refuses a budget too small for even its
//! buffers.

mod common;

use flea::engine::{Engine, EngineConfig, Logits, SeqChunk};
use flea::gguf::GgufFile;
use flea::kv_cache::KvType;
use flea::kv_disk::{KvOffload, KvReads};
use flea::model::Model;
use std::path::{Path, PathBuf};

fn kv_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flea-kv-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

fn config(n_seq: usize, kv_type: KvType, kv_offload: KvOffload, dir: &Path) -> EngineConfig {
    EngineConfig {
        n_ctx: 512,
        max_chunk: 16,
        n_seq,
        threads: 2,
        kv_type,
        kv_offload,
        kv_dir: dir.to_path_buf(),
    }
}

fn tokens(n: usize, vocab: usize, stream: usize) -> Vec<u32> {
    (0..n)
        .map(|i| 3 + ((i + 7919 * stream) as u64 * 2_654_435_761 % (vocab as u64 - 3)) as u32)
        .collect()
}

/// The bits of every logit of a row, folded (FNV-1a): equal rows, equal
/// values; a prompt's rows are too many to keep whole.
fn row_hashes(rows: &[f32], vocab: usize) -> impl Iterator<Item = u64> + '_ {
    rows.chunks_exact(vocab).map(|row| {
        row.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
            (h ^ x.to_bits() as u64).wrapping_mul(0x100_0000_01b3)
        })
    })
}

/// Every logit of a chunked prefill of each sequence (prompts of different
/// lengths, past two block boundaries; hashed per row) and of 40 decode
/// steps of all of them together (whole); and what the cache read.
fn logits(
    model: &Model,
    file: &GgufFile,
    cfg: &EngineConfig,
    dir: &Path,
) -> (Vec<u64>, Vec<f32>, KvReads) {
    let vocab = model.hparams.vocab_size;
    let mut engine = Engine::new(model, file, cfg).unwrap();
    // The file was unlinked as soon as it was open.
    assert!(is_empty(dir), "KV file left in {}", dir.display());
    let (mut prefill, mut out) = (Vec::new(), Vec::new());
    let mut lens = Vec::new();
    for s in 0..cfg.n_seq {
        let prompt = tokens(270 + 13 * s, vocab, s);
        engine
            .prefill(s, &prompt, 0, Logits::All, |rows| {
                prefill.extend(row_hashes(rows, vocab));
                Ok(true)
            })
            .unwrap();
        lens.push(prompt.len());
    }
    for step in 0..40 {
        let toks: Vec<[u32; 1]> = (0..cfg.n_seq)
            .map(|s| [tokens(1, vocab, 100 + step * 7 + s)[0]])
            .collect();
        let batch: Vec<SeqChunk<'_>> = toks
            .iter()
            .enumerate()
            .map(|(s, t)| SeqChunk {
                seq: s,
                tokens: t,
                start_pos: lens[s] + step,
                logits: Logits::Last,
            })
            .collect();
        out.extend_from_slice(engine.forward_batch(&batch).unwrap());
    }
    (prefill, out, engine.kv_reads())
}

#[test]
fn disk_logits_equal_ram_logits_bit_for_bit() {
    for name in ["arch/synth-llama3", "arch/synth-qwen2"] {
        let file = GgufFile::open(common::fixture(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        for kv_type in [KvType::F16, KvType::F32] {
            for n_seq in [1, 2] {
                let dir = kv_dir(&format!("eq-{}-{kv_type}-{n_seq}", name.replace('/', "-")));
                let ram = logits(
                    &model,
                    &file,
                    &config(n_seq, kv_type, KvOffload::Off, &dir),
                    &dir,
                );
                let disk = logits(
                    &model,
                    &file,
                    &config(n_seq, kv_type, KvOffload::On, &dir),
                    &dir,
                );
                assert_eq!(ram.0.len(), disk.0.len());
                if let Some(row) = (0..ram.0.len()).find(|&i| ram.0[i] != disk.0[i]) {
                    panic!("{name} kv {kv_type} batch {n_seq}: prefill logits differ at row {row}");
                }
                assert_eq!(ram.1.len(), disk.1.len());
                let same = ram
                    .1
                    .iter()
                    .zip(&disk.1)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{name} kv {kv_type} batch {n_seq}: decode logits differ"
                );
                // Every block attention loaded had been read ahead, in
                // prefill chunks and decode steps alike: the forward
                // pass announces exactly the loads attention makes.
                let reads = disk.2;
                assert!(reads.bytes > 0 && reads.blocks_read_ahead > 0, "{reads:?}");
                assert_eq!(
                    reads.blocks_read_in_place, 0,
                    "{name} kv {kv_type} batch {n_seq}: {reads:?}"
                );
                assert_eq!(ram.2, KvReads::default());
                assert!(is_empty(&dir), "KV file left in {}", dir.display());
                std::fs::remove_dir(&dir).unwrap();
            }
        }
    }
}

#[test]
fn auto_offloads_only_what_does_not_fit() {
    let file = GgufFile::open(common::fixture("arch/synth-llama3.gguf")).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let dir = std::env::temp_dir();
    let long = EngineConfig {
        n_ctx: 8192,
        ..config(1, KvType::F16, KvOffload::Auto, &dir)
    };
    let ram = EngineConfig {
        kv_offload: KvOffload::Off,
        ..long.clone()
    };
    let disk = EngineConfig {
        kv_offload: KvOffload::On,
        ..long.clone()
    };
    let (ram_min, disk_min) = (ram.minimum_budget(&model), disk.minimum_budget(&model));
    assert!(disk_min < ram_min, "{disk_min} vs {ram_min}");
    // Room for the RAM cache: it stays in RAM.
    assert_eq!(long.plan(&model, ram_min).unwrap().kv_file_bytes, 0);
    // Between the two minimums: on disk, and the plan says so.
    let plan = long.plan(&model, disk_min).unwrap();
    assert_eq!(plan.kv_file_bytes, long.kv_file_bytes(&model.hparams));
    assert!(plan.kv_file_bytes > 0);
    assert!(plan.to_string().contains("KV cache on disk"), "{plan}");
    assert_eq!(long.resolved(&plan).kv_offload, KvOffload::On);
    assert!(ram.plan(&model, disk_min).is_err());
    // Below even that: the usual error, naming the parts.
    let e = long.plan(&model, disk_min - 1).unwrap_err();
    assert!(
        e.message.contains("below the minimum") && e.message.contains("KV cache on disk"),
        "{e}"
    );
}
