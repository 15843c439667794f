//! The HTML report: its PNG copies are readable charts, its page holds every chart, and it
//! renders in headless Chromium with each chart's box drawn.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Run, synthetic};
use mtrl_eval::monitor::{HackingAlarm, Report, ReportFiles};

fn write_report(name: &str, run: Run) -> ReportFiles {
    let history = synthetic(run, 11);
    let alarms = HackingAlarm::default().scan(&history);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    Report::new(format!("mtrl report: {run:?}"))
        .history(&history)
        .alarms(alarms)
        .write(&dir)
        .unwrap()
}

/// An RGB image.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<[u8; 3]>,
}

impl Image {
    fn read(path: &Path) -> Image {
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        let channels = info.color_type.samples();
        assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
        let rgb = buf[..info.buffer_size()]
            .chunks(channels)
            .map(|p| match channels {
                1 | 2 => [p[0]; 3],
                _ => [p[0], p[1], p[2]],
            })
            .collect();
        Image {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    /// Pixels in the box that differ from white, and those that are coloured (a series, not
    /// the grey axes or text).
    fn ink(&self, x: usize, y: usize, w: usize, h: usize) -> (usize, usize) {
        let (mut ink, mut colour) = (0, 0);
        for row in y..(y + h).min(self.height) {
            for col in x..(x + w).min(self.width) {
                let [r, g, b] = self.rgb[row * self.width + col];
                if [r, g, b] != [255, 255, 255] {
                    ink += 1;
                }
                if r.max(g).max(b) - r.min(g).min(b) >= 80 {
                    colour += 1;
                }
            }
        }
        (ink, colour)
    }
}

#[test]
fn png_copies_are_readable_charts() {
    let files = write_report("report-png", Run::Learning);
    assert_eq!(files.pngs.len(), Report::PLOTS.len());
    for (png, name) in files.pngs.iter().zip(Report::PLOTS) {
        assert!(png.ends_with(format!("plots/{name}.png")));
        let image = Image::read(png);
        assert_eq!((image.width, image.height), (760, 380));
        let (ink, colour) = image.ink(0, 0, image.width, image.height);
        let area = image.width * image.height;
        assert!(ink * 50 > area, "{name}: only {ink} drawn pixels");
        assert!(
            colour > 300,
            "{name}: only {colour} coloured pixels: no data drawn"
        );
    }
}

#[test]
fn the_page_holds_every_chart_and_the_alarms() {
    let files = write_report("report-html-hacked", Run::FinalResponseHack);
    let html = std::fs::read_to_string(&files.html).unwrap();
    for name in Report::PLOTS {
        let at = html
            .find(&format!("<figure class=\"plot\" id=\"plot-{name}\">"))
            .unwrap_or_else(|| panic!("no figure {name}"));
        assert!(
            html[at..]
                .trim_start_matches(|c| c != '>')
                .starts_with("><svg")
        );
    }
    assert!(html.contains("reward_without_success"));
    assert!(html.contains("format_drift"));
    assert!(html.contains("rollout/reward/mean"));
    let healthy =
        std::fs::read_to_string(write_report("report-html-healthy", Run::Learning).html).unwrap();
    assert!(healthy.contains("No reward-hacking or collapse alarm."));
    assert!(html.contains("rollout/reward/valid_mean"));
    assert!(html.contains("rollout/tokens/response_max"));
}

/// A Chromium-family browser: `MTRL_CHROMIUM`, or one on the PATH.
fn browser() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MTRL_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome", "chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// Runs the browser headless on `url` with `args`, and returns its standard output.
fn chromium(browser: &Path, profile: &Path, args: &[String], url: &str) -> String {
    // The output goes to a file: a page's DOM can be larger than a pipe holds.
    let out_path = profile.with_extension("stdout");
    let out_file = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::from(out_file))
        .stderr(Stdio::null())
        .spawn()
        .expect("the browser starts");
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the browser did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "the browser failed: {status:?}");
    std::fs::read_to_string(&out_path).unwrap()
}

#[test]
fn the_report_renders_in_headless_chromium() {
    let Some(browser) = browser() else {
        assert!(
            std::env::var_os("MTRL_REQUIRE_CHROMIUM").is_none(),
            "MTRL_REQUIRE_CHROMIUM is set but no Chromium was found (set MTRL_CHROMIUM)"
        );
        eprintln!("skipped: no Chromium found (install `chromium` or set MTRL_CHROMIUM)");
        return;
    };
    let files = write_report("report-render", Run::FinalResponseHack);
    let dir = files.html.parent().unwrap().to_path_buf();
    let profile = dir.join("chromium-profile");
    let width = 1600;

    // Measure each chart's box: a copy of the page writes them into its title.
    let html = std::fs::read_to_string(&files.html).unwrap();
    let probe = html.replace(
        "</body>",
        "<script>document.title = JSON.stringify({height: document.documentElement.scrollHeight, \
         plots: [...document.querySelectorAll('figure.plot svg')].map(e => { \
         const r = e.getBoundingClientRect(); return {id: e.parentElement.id, \
         x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height}; })});</script></body>",
    );
    let probe_path = dir.join("probe.html");
    std::fs::write(&probe_path, probe).unwrap();
    let size = format!("--window-size={width},1200");
    let dom = chromium(
        &browser,
        &profile,
        &["--dump-dom".into(), size],
        &format!("file://{}", probe_path.display()),
    );
    let title = dom
        .split_once("<title>")
        .and_then(|(_, rest)| rest.split_once("</title>"))
        .map(|(t, _)| t.replace("&amp;", "&"))
        .expect("the page has a title");
    let layout: serde_json::Value = serde_json::from_str(&title).expect("the probe ran");
    let height = layout["height"].as_f64().unwrap().ceil() as usize;
    let plots = layout["plots"].as_array().unwrap();
    assert_eq!(plots.len(), Report::PLOTS.len(), "{layout}");

    // Screenshot the real page at the full height, and look inside each box.
    let shot = dir.join("screenshot.png");
    chromium(
        &browser,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            format!("--window-size={width},{height}"),
        ],
        &format!("file://{}", files.html.display()),
    );
    let image = Image::read(&shot);
    assert_eq!(image.width, width);
    for plot in plots {
        let id = plot["id"].as_str().unwrap();
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| plot[k].as_f64().unwrap().round() as usize);
        assert!(w >= 700 && h >= 350, "{id}: box {w}x{h}");
        assert!(y + h <= image.height, "{id} lies outside the screenshot");
        let (ink, colour) = image.ink(x, y, w, h);
        assert!(ink * 50 > w * h, "{id}: only {ink} drawn pixels in its box");
        assert!(
            colour > 300,
            "{id}: only {colour} coloured pixels: the data is not drawn"
        );
    }
    // The same check finds nothing in a blank stretch of the page (the right margin).
    let right = plots
        .iter()
        .map(|p| (p["x"].as_f64().unwrap() + p["w"].as_f64().unwrap()) as usize)
        .max()
        .unwrap();
    if right + 40 < width {
        let (ink, _) = image.ink(right + 20, 0, width - right - 30, image.height);
        assert_eq!(ink, 0, "the margin should be blank");
    }
    eprintln!("screenshot: {}", shot.display());
}

/// Writes `lines` as a metrics file named `name` and returns its path.
fn metrics_file(name: &str, lines: &[String]) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn lines_of(history: &[mtrl_eval::monitor::StepMetrics]) -> Vec<String> {
    history
        .iter()
        .map(|m| serde_json::to_string(m).unwrap())
        .collect()
}

#[test]
fn a_metrics_file_that_is_not_one_run_is_refused_naming_the_file_and_line() {
    use mtrl_eval::monitor::{read_metrics, read_metrics_log};
    let history = synthetic(Run::Learning, 3);
    // The file twice over: its records repeat exactly, which no resumed run does.
    let mut twice = lines_of(&history);
    twice.extend(lines_of(&history));
    let path = metrics_file("twice.jsonl", &twice);
    let e = read_metrics(&path).unwrap_err().to_string();
    let n = history.len();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(
        e.contains(&format!(
            "line {} repeats line 1 (step {})",
            n + 1,
            history[0].step
        )),
        "{e}"
    );
    // A line that is not UTF-8 and a line that is not a record: the file and the line.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("latin1.jsonl");
    let mut bytes = (lines_of(&history[..2]).join("\n") + "\n").into_bytes();
    bytes.extend(b"{\"step\": 9, \"caf\xe9\": 1}\n");
    std::fs::write(&path, bytes).unwrap();
    let e = read_metrics(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&path.display().to_string()) && e.contains("line 3") && e.contains("UTF-8"),
        "{e}"
    );
    let path = metrics_file(
        "garbage.jsonl",
        &[lines_of(&history[..1])[0].clone(), "{]".into()],
    );
    let e = read_metrics(&path).unwrap_err().to_string();
    assert!(
        e.starts_with(&path.display().to_string()) && e.contains("line 2"),
        "{e}"
    );
    // A missing file names itself.
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-metrics.jsonl");
    let e = read_metrics_log(&missing).unwrap_err().to_string();
    assert!(e.starts_with(&missing.display().to_string()), "{e}");
}

#[test]
fn a_resumed_run_keeps_the_later_records_and_the_report_says_so() {
    use mtrl_eval::monitor::read_metrics_log;
    let history = synthetic(Run::Learning, 5);
    // Steps 1..=30 written, then a run resumed from the checkpoint of step 20 rewrites 21..
    let mut resumed = history[20..].to_vec();
    for m in &mut resumed {
        *m.values.entry("time/update_s".into()).or_insert(0.0) += 0.5;
    }
    let mut lines = lines_of(&history[..30]);
    lines.extend(lines_of(&resumed));
    let path = metrics_file("resumed.jsonl", &lines);
    let log = read_metrics_log(&path).unwrap();
    assert_eq!(log.steps.len(), history.len());
    assert!(log.steps.windows(2).all(|w| w[0].step < w[1].step));
    assert_eq!(log.steps[25], resumed[5], "the resumed run's record wins");
    assert_eq!(log.resumptions.len(), 1);
    let r = &log.resumptions[0];
    assert_eq!((r.line, r.step, r.replaced), (31, history[20].step, 10));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("resumed-report");
    let files = Report::new("resumed")
        .history(&log.steps)
        .resumptions(&log.resumptions)
        .write(&dir)
        .unwrap();
    let page = std::fs::read_to_string(&files.html).unwrap();
    assert!(
        page.contains(&format!("resumed at step {} (line 31)", history[20].step)),
        "{page}"
    );
}

#[test]
fn a_steps_validation_record_beside_its_training_record_is_one_step_not_a_resumption() {
    use mtrl_eval::monitor::{StepMetrics, read_metrics_log};
    let mut lines = Vec::new();
    for step in 1..=3u64 {
        let mut train = StepMetrics::new(step);
        train.set("rollout/reward/mean", 0.1 * step as f64);
        let mut val = StepMetrics::new(step);
        val.set("val/tsr", 0.2 * step as f64);
        lines.extend(lines_of(&[train, val]));
    }
    let path = metrics_file("train-and-val.jsonl", &lines);
    let log = read_metrics_log(&path).unwrap();
    assert_eq!(log.steps.len(), 6);
    assert!(log.resumptions.is_empty());
    // A step's metric reported again is a resumed run from that step.
    let mut again = StepMetrics::new(3);
    again.set("rollout/reward/mean", 0.9);
    lines.push(lines_of(&[again])[0].clone());
    let log = read_metrics_log(metrics_file("again.jsonl", &lines)).unwrap();
    assert_eq!(log.steps.len(), 5);
    assert_eq!(log.resumptions[0].replaced, 2);
}

#[test]
fn an_empty_metrics_file_gives_a_report_that_says_it_is_empty() {
    use mtrl_eval::monitor::read_metrics_log;
    let path = metrics_file("empty.jsonl", &[]);
    let log = read_metrics_log(&path).unwrap();
    assert!(log.steps.is_empty() && log.resumptions.is_empty());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("empty-report");
    let files = Report::new("empty")
        .history(&log.steps)
        .write(&dir)
        .unwrap();
    let page = std::fs::read_to_string(&files.html).unwrap();
    assert!(page.contains("No steps: the run recorded none"), "{page}");
}
