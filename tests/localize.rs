//! `deltann localize` on planted causes: a copy of the demo model with one convolution's weights
//! scaled must be named as the first divergent node on ONNX Runtime and on tract; and the ORT
//! optimizer that changes MobileNetV2-int8's answers between optimization levels must be found by
//! bisection and, disabled in a sweep of its own, make the two levels agree.

use arrow::array::AsArray;
use prost::Message;
use tract_onnx::pb;

use crate::util::{self, text};

/// Writes a copy of `from` whose `nth` Conv has its weights scaled by `factor`; returns that
/// node's name.
fn plant(from: &std::path::Path, to: &std::path::Path, nth: usize, factor: f32) -> String {
    let mut model = pb::ModelProto::decode(std::fs::read(from).unwrap().as_slice()).unwrap();
    let graph = model.graph.as_mut().unwrap();
    let conv = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Conv")
        .nth(nth)
        .expect("enough Conv nodes")
        .clone();
    let weights = graph
        .initializer
        .iter_mut()
        .find(|t| t.name == conv.input[1])
        .expect("the Conv's weights are an initializer");
    if weights.raw_data.is_empty() {
        for v in &mut weights.float_data {
            *v *= factor;
        }
    } else {
        let scaled: Vec<u8> = weights
            .raw_data
            .chunks_exact(4)
            .flat_map(|b| (f32::from_le_bytes(b.try_into().unwrap()) * factor).to_le_bytes())
            .collect();
        weights.raw_data = scaled;
    }
    std::fs::write(to, model.encode_to_vec()).unwrap();
    conv.name
}

/// The cell ids of `deltann plan`'s table, with their row text.
fn cells(sweep: &std::path::Path) -> Vec<(String, String)> {
    let out = util::run(&["plan", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('┆').map(str::trim).collect();
            (fields.len() > 4 && fields[1].len() == 16)
                .then(|| (fields[1].to_string(), line.into()))
        })
        .collect()
}

fn cell<'a>(cells: &'a [(String, String)], model: &str, engine: &str) -> &'a str {
    &cells
        .iter()
        .find(|(_, row)| row.contains(&format!("┆ {model} ")) && row.contains(engine))
        .unwrap_or_else(|| panic!("no {model} {engine} cell in {cells:?}"))
        .0
}

#[test]
fn a_planted_convolution_is_named_first_on_ort_and_tract() {
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("planted.onnx");
    let data = util::data();
    let node = plant(&data.join("efficientnet-lite0.onnx"), &planted, 20, 1.25);
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            r#"
store = "store"

[dataset]
images = "{{data}}/images"

[[model]]
name = "lite0"
path = "{{data}}/efficientnet-lite0.onnx"
preset = "tf127"

[[model]]
name = "planted"
path = "{}"
preset = "tf127"

[environments]
engine = ["ort", "tract"]
ort_optimization = ["disabled"]
tract_plan = ["optimized"]
"#,
            planted.display()
        ),
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let store = dir.path().join("store");
    let cells = cells(&sweep);
    for engine in ["engine=ort", "engine=tract"] {
        let a = cell(&cells, "lite0", engine);
        let b = cell(&cells, "planted", engine);
        let out = util::run(&[
            "localize",
            store.to_str().unwrap(),
            "--pair",
            a,
            b,
            "--image",
            "grace_hopper.jpg",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("passes: skipped"), "{stdout}");
        let first = stdout
            .lines()
            .find(|l| l.contains("first divergent node:"))
            .unwrap_or_else(|| panic!("{engine}: no divergent node in {stdout}"));
        assert!(
            first.contains(&format!("first divergent node: {node} (Conv,")),
            "{engine}: expected {node} first, got {first}"
        );
        // The exposed runs still compute what the sweep stored, bit for bit.
        assert_eq!(
            stdout
                .matches("the re-run gives the stored logits bit for bit on 1 of 1 images")
                .count(),
            2,
            "{stdout}"
        );
        // Everything before it agrees exactly, so it is also the first node to differ at all.
        assert!(
            stdout.contains(&format!("first node that differs at all: {node} (Conv,")),
            "{stdout}"
        );
    }

    // The results, read back from the store's files by arrow-rs: one `layers` row per engine
    // naming the planted node, and its curve, in which that node amplifies the most.
    let found = util::read_table(&store, "localizations").all().unwrap();
    assert_eq!(
        util::strings(&found, "node"),
        vec![Some(node.clone()), Some(node.clone())]
    );
    assert_eq!(
        util::strings(&found, "kind"),
        vec![Some("layers".to_string()); 2]
    );
    let curve = util::read_table(&store, "node_errors").all().unwrap();
    let ids = util::strings(&curve, "localization_id");
    let names = util::strings(&curve, "node");
    let gains = curve
        .column_by_name("amplification")
        .unwrap()
        .as_primitive::<arrow::datatypes::Float64Type>()
        .clone();
    for id in util::strings(&found, "localization_id") {
        let loudest = (0..curve.num_rows())
            .filter(|&i| ids[i] == id)
            .max_by(|&x, &y| gains.value(x).total_cmp(&gains.value(y)))
            .unwrap();
        assert_eq!(names[loudest].as_deref(), Some(node.as_str()));
    }
    // And the report shows them.
    let out = util::run(&["report", store.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    let section = &report[report
        .find("Localisations")
        .expect("a Localisations section")..];
    assert_eq!(
        section.matches(&format!("{node} (Conv)")).count(),
        2,
        "{section}"
    );

    // From the TUI: `L` on the image screen runs the same command for the family's reference
    // against the selected cell, and the screen then shows the new curve.
    let mut loader = deltann_tui::data::Loader::new(&store)
        .with_program(std::path::PathBuf::from(env!("CARGO_BIN_EXE_deltann")));
    let mut app = deltann_tui::app::App::new(store.clone());
    drive(&mut app, &mut loader, deltann_tui::app::Request::Analyze);
    let analysis = app.analysis.clone().unwrap();
    let family = analysis
        .groups
        .iter()
        .position(|g| g.family == "lite0")
        .unwrap();
    let request = app.open_image("grace_hopper.jpg".into(), family).unwrap();
    drive(&mut app, &mut loader, request);
    let reference = analysis.groups[family].cells[0];
    let view = app.image.as_mut().unwrap();
    assert!(view.curve.is_none());
    view.cursor = view
        .rows
        .as_ref()
        .unwrap()
        .iter()
        .position(|r| r.cell != reference)
        .unwrap();
    let other = view.rows.as_ref().unwrap()[view.cursor].cell;
    let request = app.update(deltann_tui::app::Action::Localize).unwrap();
    drive(&mut app, &mut loader, request);
    assert_eq!(app.error, None);
    let (localization, points) = app.image.as_ref().unwrap().curve.clone().unwrap();
    assert_eq!(localization.cell_a, analysis.cells[reference].cell_id);
    assert_eq!(localization.cell_b, analysis.cells[other].cell_id);
    assert_eq!(
        points.len(),
        94,
        "every non-constant node of EfficientNet-Lite0"
    );
}

/// Performs `request` and everything the app asks for in turn, as the TUI's loop would.
fn drive(
    app: &mut deltann_tui::app::App,
    loader: &mut deltann_tui::data::Loader,
    request: deltann_tui::app::Request,
) {
    let mut pending = vec![request];
    while let Some(request) = pending.pop() {
        for action in loader.handle(request) {
            pending.extend(app.update(action));
        }
    }
}

#[test]
fn bisection_finds_the_pass_that_changes_int8_answers_and_disabling_it_agrees() {
    let Some(shared) = util::shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let sweep = util::write_sweep(
        dir.path(),
        &format!(
            r#"
store = "store"

[dataset]
images = "{images}/imagenet-sample"
labels = "{images}/labels.csv"
limit = 24

[[model]]
name = "mobilenetv2-int8"
path = "{models}/mobilenetv2-int8.onnx"
preset = "torchvision"

[environments]
engine = ["ort"]
ort_optimization = ["disabled", "all"]
ort_disabled_optimizers = [[], ["QDQSelectorActionTransformer"]]
exclude = [{{ ort_optimization = "disabled", ort_disabled_optimizers = ["QDQSelectorActionTransformer"] }}]
"#,
            images = shared.join("images").display(),
            models = shared.join("models").display(),
        ),
    );
    let out = util::run(&["collect", "--quiet", sweep.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let cells = cells(&sweep);
    assert_eq!(cells.len(), 3, "{cells:?}");
    let disabled = cell(&cells, "mobilenetv2-int8", "opt=disabled");
    let all = cells
        .iter()
        .find(|(_, row)| row.contains("opt=all") && !row.contains("QDQSelector"))
        .map(|(id, _)| id.as_str())
        .expect("the opt=all cell");
    let store = dir.path().join("store");
    let out = util::run(&[
        "localize",
        store.to_str().unwrap(),
        "--pair",
        disabled,
        all,
        "--passes",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("culprit: QDQSelectorActionTransformer "),
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("the re-run gives the stored logits bit for bit")
            .count(),
        2,
        "{stdout}"
    );
    let found = util::read_table(&store, "localizations").all().unwrap();
    assert_eq!(
        util::strings(&found, "culprits"),
        vec![Some("QDQSelectorActionTransformer".to_string())]
    );
    assert_eq!(util::strings(&found, "cell_b"), vec![Some(all.to_string())]);

    // Independently of the bisection: the sweep's own cell with that pass disabled answers as
    // the unoptimised one does, image for image, while the fully optimised one does not.
    let max_delta = |other: &str| {
        util::query_value(
            &store,
            &format!(
                "SELECT max(max_abs_logit) FROM comparisons WHERE (cell_a = '{disabled}' AND \
                 cell_b = '{other}') OR (cell_a = '{other}' AND cell_b = '{disabled}')"
            ),
        )
        .parse::<f64>()
        .unwrap()
    };
    let without = cells
        .iter()
        .find(|(_, row)| row.contains("QDQSelector"))
        .map(|(id, _)| id.as_str())
        .unwrap();
    assert!(max_delta(all) > 0.1, "{}", max_delta(all));
    assert_eq!(max_delta(without), 0.0);
}
