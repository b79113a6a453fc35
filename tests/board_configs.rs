//! Every shipped config parses, and the board budgets plan a 13B Q4_K_M
//! model (laid out as `flea synth` would write it, without writing it).

use flea::config::Config;
use flea::engine::EngineConfig;
use flea::synth::{preset_model, Preset, QuantMix};
use std::path::PathBuf;

fn configs() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

fn engine_for(config: &Config, model_ctx: usize) -> EngineConfig {
    EngineConfig {
        n_ctx: match config.generation.context {
            0 => model_ctx.min(2048),
            c => c,
        },
        max_chunk: config.pipeline.prefill_chunk.max(config.pipeline.batch),
        n_seq: config.pipeline.batch,
        threads: 1,
        kv_type: config.memory.kv_type,
        kv_offload: config.memory.kv_offload,
        ..Default::default()
    }
}

#[test]
fn every_config_parses_and_plans_13b() {
    let model = preset_model(Preset::B13, QuantMix::Q4KM);
    let file_len = model
        .token_embd
        .file_range
        .end
        .max(model.output.file_range.end)
        .max(model.layers.last().unwrap().file_span().end);
    let files = configs();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for board in [
        "orin-nano-8gb",
        "orin-nx-16gb",
        "agx-orin-32gb",
        "agx-orin-64gb",
        "dgpu-8gb",
        "cpu",
        "default",
    ] {
        assert!(
            names.iter().any(|n| n == board),
            "configs/{board}.toml is missing"
        );
    }
    for path in &files {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let engine = engine_for(&config, model.hparams.context_length);
        let budget = config.memory.budget.resolve(file_len);
        match engine.plan(&model, budget) {
            Ok(plan) => {
                assert!(
                    plan.total_bytes() <= budget,
                    "{}: plan exceeds its budget",
                    path.display()
                );
                eprintln!(
                    "{}: {} of 40 layers streamed",
                    path.display(),
                    plan.streamed_layers().count()
                );
            }
            Err(e) => eprintln!("{}: 13B does not fit: {e}", path.display()),
        }
    }
}

#[test]
fn orin_nano_streams_13b_q4_k_m_inside_its_budget() {
    let model = preset_model(Preset::B13, QuantMix::Q4KM);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/orin-nano-8gb.toml");
    let config = Config::load(&path).unwrap();
    let engine = engine_for(&config, model.hparams.context_length);
    let budget = config.memory.budget.resolve(0);
    let plan = engine.plan(&model, budget).unwrap();
    let model_bytes: u64 = model.layers.iter().map(|l| l.weight_bytes()).sum();
    assert!(
        model_bytes > budget,
        "13B Q4_K_M must be larger than the Orin Nano budget"
    );
    assert!(plan.is_streaming());
    assert!(plan.total_bytes() <= budget);
    let text = plan.to_string();
    assert!(
        text.contains("streamed") && text.contains("resident"),
        "{text}"
    );
    eprintln!("orin-nano-8gb, 13B Q4_K_M:\n{text}");
}

/// Issue 13, bug 3 (in part): the Orin boards share one memory between CPU
/// and GPU, so their configs feed streamed layers from the mapped host
/// slots; `buffer = "device"` there cost two more slots of the same RAM.
#[test]
fn orin_configs_read_streamed_layers_in_place() {
    for path in configs() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if !name.contains("orin") {
            continue;
        }
        let config = Config::load(&path).unwrap();
        assert_eq!(
            config.device.buffer,
            flea::backend::Feed::Mapped,
            "configs/{name}.toml"
        );
    }
}
