//! Render the report's `index.html` in headless Chromium: the page must load
//! with no errors, show the summary table, and paint a non-trivial
//! screenshot. Skips when `/usr/bin/chromium` is not installed.
//!
//! Set `RESGRAD_KEEP_REPORT=DIR` to keep the report and `screenshot.png` in
//! `DIR` for a look (the synthetic runs go to `DIR/runs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use resgrad::report::{report, synthetic};

const CHROMIUM: &str = "/usr/bin/chromium";

fn temp_dir(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("resgrad-chromium-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Run chromium headless with `extra` arguments on `url`, killing it after
/// 90 s. A fresh profile directory each time.
fn chromium(work: &Path, tag: &str, extra: &[String], url: &str) -> Output {
    let profile = work.join(format!("profile-{tag}"));
    std::fs::create_dir_all(&profile).unwrap();
    let mut cmd = Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn chromium");
    // Drain the pipes on threads so chromium never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium ({tag}) did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

#[test]
fn report_renders_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() {
        println!("skipping: chromium not installed");
        return;
    }
    let work = temp_dir("work");
    let (runs_dir, out) = match std::env::var_os("RESGRAD_KEEP_REPORT") {
        Some(d) => (PathBuf::from(&d).join("runs"), PathBuf::from(d)),
        None => (work.join("runs"), work.join("report")),
    };
    let runs = synthetic::write_example_runs(&runs_dir).unwrap();
    let summary = report(&runs, &out).unwrap();
    let index = summary.index.canonicalize().unwrap();
    let url = format!("file://{}", index.display());

    // 1. Screenshot.
    let shot = out.join("screenshot.png");
    let _ = std::fs::remove_file(&shot);
    let o = chromium(
        &work,
        "shot",
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000".into(),
        ],
        &url,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "chromium failed: {stderr}");
    for bad in [
        "Uncaught",
        "ERR_FILE_NOT_FOUND",
        "Failed to load resource",
        "net::ERR_",
    ] {
        assert!(!stderr.contains(bad), "page error `{bad}`:\n{stderr}");
    }
    let bytes = std::fs::read(&shot).expect("screenshot written");
    assert!(
        bytes.len() > 20_000,
        "screenshot only {} bytes",
        bytes.len()
    );

    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 2000));
    let channels = info.color_type.samples();
    let colours: HashSet<&[u8]> = buf[..info.buffer_size()].chunks(channels).collect();
    assert!(
        colours.len() > 50,
        "only {} distinct colours",
        colours.len()
    );

    // 2. The DOM after load holds the table and the three inline plots.
    let o = chromium(&work, "dom", &["--dump-dom".into()], &url);
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "chromium --dump-dom failed");
    assert_eq!(dom.matches("<tr class=\"run\">").count(), 3, "{dom}");
    assert_eq!(dom.matches("<svg").count(), 3);
    assert!(dom.contains("conv_diverged"));

    let _ = std::fs::remove_dir_all(&work);
}
