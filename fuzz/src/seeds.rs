//! Writes a starting corpus for each fuzz target into `corpus/<target>/`: valid inputs the
//! fuzzer mutates from (the sweep files and images of `data/` are added by `scripts/fuzz.sh`).

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Builder, Int32Array, Int64Array, ListBuilder, StringArray};
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::RecordBatch;
use deltann_collector::protocol::{self, Done, Ready};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)
}

/// What a worker that ran two images, one of which failed, prints.
fn worker_output() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    protocol::write_line(
        &mut out,
        &Ready {
            protocol: protocol::PROTOCOL_VERSION,
            ok: true,
            engine: "tract".into(),
            engine_version: "0.23.9".into(),
            load_ms: 12.5,
            error: None,
        },
    )?;
    let mut logits = ListBuilder::new(Float32Builder::new());
    logits.values().append_slice(&[0.5, -1.0, 3.25]);
    logits.append(true);
    logits.append(false);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a.jpg", "b.png"])),
        Arc::new(Int32Array::from(vec![0, 0])),
        Arc::new(Int64Array::from(vec![0, 0])),
        Arc::new(Int32Array::from(vec![2, 2])),
        Arc::new(logits.finish()),
        Arc::new(Int64Array::from(vec![1000, 1000])),
        Arc::new(Int64Array::from(vec![2000, 2000])),
        Arc::new(StringArray::from(vec![None, Some("engine said no")])),
    ];
    let batch = RecordBatch::try_new(protocol::result_schema(), columns)?;
    {
        let mut writer = StreamWriter::try_new(&mut out, &protocol::result_schema())?;
        writer.write(&batch)?;
        writer.finish()?;
    }
    protocol::write_line(
        &mut out,
        &Done {
            batches: 1,
            peak_rss_kib: Some(4096),
        },
    )?;
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new("corpus");
    write(&corpus.join("worker_output"), "two-images", &worker_output()?)?;
    let ready = serde_json::json!({"protocol": protocol::PROTOCOL_VERSION, "ok": false,
        "engine": "ort", "engine_version": "", "load_ms": 0.0, "error": "cannot load"});
    write(&corpus.join("worker_output"), "refused", format!("{ready}\n").as_bytes())?;

    let line = r#"{"seq":4,"table":"outputs","path":"outputs/model=m/engine=ort/part-000004-f71de32f3b03656e.parquet","rows":24,"bytes":93811,"cell_id":"f71de32f3b03656e","run_id":"r","committed_at_us":1795704434123456,"xxh3":"3f0c5e1b9a27d4c8"}"#;
    let g0 = r#"{"seq":5,"table":"errors","path":"errors/part-000005-f71de32f3b03656e.parquet","rows":1,"bytes":2000,"cell_id":"f71de32f3b03656e","committed_at_us":1,"group":{"index":0,"len":2}}"#;
    let g1 = r#"{"seq":6,"table":"outputs","path":"outputs/model=m/engine=ort/part-000006-f71de32f3b03656e.parquet","rows":9,"bytes":9000,"cell_id":"f71de32f3b03656e","committed_at_us":2,"group":{"index":1,"len":2}}"#;
    write(&corpus.join("manifest"), "plain", format!("{line}\n{line}\n").as_bytes())?;
    write(&corpus.join("manifest"), "group", format!("{line}\n{g0}\n{g1}\n").as_bytes())?;
    write(&corpus.join("manifest"), "torn", format!("{line}\n{g0}\n{}", &g1[..40]).as_bytes())?;
    Ok(())
}
