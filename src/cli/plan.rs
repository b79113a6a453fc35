//! `flea plan`: what a budget keeps resident and streams, and the predicted
//! time per token.

use super::session::{open_session, CommonArgs};
use clap::Args;
use flea::bench;
use flea::config::ByteSize;
use flea::engine::EngineConfig;
use flea::kv_cache::{KvCache, KvShape, KvType};
use flea::kv_disk::{DiskKv, KvOffload};
use flea::{Error, Result};
use std::io::Write;

#[derive(Args)]
pub struct PlanArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Skip the disk and compute measurements (no prediction).
    #[arg(long)]
    no_measure: bool,
}

pub fn plan(args: PlanArgs) -> Result<u8> {
    let session = open_session(&args.common)?;
    let mut out = std::io::stdout().lock();
    let io = Error::stdout;
    writeln!(out, "{}", session.plan).map_err(io)?;
    writeln!(
        out,
        "minimum budget for this model at context {}: {}",
        session.engine.n_ctx,
        ByteSize(session.engine.minimum_budget(&session.model))
    )
    .map_err(io)?;
    // Where the KV cache lives ([memory] kv_offload) and what each choice
    // costs in RAM.
    let hp = &session.model.hparams;
    let e = &session.engine;
    let ram_min = EngineConfig {
        kv_offload: KvOffload::Off,
        ..e.clone()
    }
    .minimum_budget(&session.model);
    let disk_min = EngineConfig {
        kv_offload: KvOffload::On,
        ..e.clone()
    }
    .minimum_budget(&session.model);
    let file = e.kv_file_bytes(hp);
    let kv_type = KvCache::effective_type(e.kv_type, hp.head_dim);
    if session.plan.kv_file_bytes > 0 {
        writeln!(
            out,
            "kv cache: on disk in {} ({} file, {} of buffers in RAM); every token reads up to {} of it (at full context)",
            e.kv_dir.display(),
            ByteSize(file),
            ByteSize(DiskKv::ram_bytes(
                KvShape::of(hp, e.n_seq, e.n_ctx),
                kv_type,
                e.max_chunk
            )),
            ByteSize(file)
        )
        .map_err(io)?;
    } else {
        writeln!(
            out,
            "kv cache: in RAM ({})",
            ByteSize(KvCache::bytes_for(
                hp.n_layers,
                e.n_seq,
                e.n_ctx,
                hp.kv_dim(),
                kv_type
            ))
        )
        .map_err(io)?;
    }
    writeln!(
        out,
        "minimum budget with the kv cache in RAM: {}; on disk: {} (kv_offload = {:?})",
        ByteSize(ram_min),
        ByteSize(disk_min),
        e.kv_offload
    )
    .map_err(io)?;
    // Each sequence decoded together costs a KV cache: show what batching
    // takes from the resident layers under the same budget.
    let trade: Vec<String> = [1usize, 4, 16]
        .iter()
        .map(|&n| {
            let e = session.engine.with_batch(n);
            match e.plan(&session.model, session.plan.budget) {
                Ok(p) => format!(
                    "batch {n}: {} resident layers",
                    p.placement.len() - p.streamed_layers().count()
                ),
                Err(_) => format!("batch {n}: does not fit"),
            }
        })
        .collect();
    writeln!(out, "{}", trade.join("; ")).map_err(io)?;
    // What the f16 cache buys over f32 under the same budget.
    let kv_line = [KvType::F16, KvType::F32]
        .iter()
        .map(|&kv_type| {
            let e = EngineConfig {
                kv_type,
                ..session.engine.clone()
            };
            let kv = KvCache::bytes_for(
                session.model.hparams.n_layers,
                e.n_seq,
                e.n_ctx,
                session.model.hparams.kv_dim(),
                KvCache::effective_type(kv_type, session.model.hparams.head_dim),
            );
            match e.plan(&session.model, session.plan.budget) {
                Ok(p) => format!(
                    "kv {kv_type}: {} cache, {} resident layers",
                    ByteSize(kv),
                    p.placement.len() - p.streamed_layers().count()
                ),
                Err(_) => format!("kv {kv_type}: {} cache, does not fit", ByteSize(kv)),
            }
        })
        .collect::<Vec<_>>();
    writeln!(
        out,
        "{} (this run: kv {})",
        kv_line.join("; "),
        session.engine.kv_type
    )
    .map_err(io)?;
    if args.no_measure {
        return Ok(0);
    }
    log::info!("measuring disk bandwidth (O_DIRECT) and compute rate...");
    let disk = bench::measure_disk_bandwidth(&session.path, 512 << 20)?;
    let compute =
        bench::measure_compute_rate(&session.path, &session.model, session.engine.threads)?;
    let p = bench::predict(&session.plan, &session.model, disk.bytes_per_s, compute);
    writeln!(
        out,
        "disk {:.2} GB/s ({}), compute {:.2} GB/s of weights on {} threads",
        disk.bytes_per_s / 1e9,
        if disk.direct { "O_DIRECT" } else { "buffered" },
        compute / 1e9,
        session.engine.threads
    )
    .map_err(io)?;
    writeln!(
        out,
        "predicted decode: {:.1} ms/token with prefetch (I/O {:.1} ms, compute {:.1} ms overlapped), {:.1} ms/token without",
        p.overlapped_seconds * 1e3,
        p.io_seconds * 1e3,
        p.compute_seconds * 1e3,
        p.serial_seconds * 1e3
    )
    .map_err(io)?;
    Ok(0)
}
