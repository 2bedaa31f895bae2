//! `resgrad derive` end to end: the built binary, its exit code, its report
//! and its JSON.

use std::process::Command;

fn resgrad(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_resgrad"))
        .args(args)
        .output()
        .expect("run resgrad")
}

#[test]
fn derive_prints_the_derivation_and_exits_0() {
    let out = resgrad(&["derive"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for heading in [
        "1. dL/dx5: WHAT ARRIVES FROM THE HEAD",
        "2. THE CHAIN RULE, TERM BY TERM",
        "2a. One unit back",
        "2b. Two units back",
        "3. THE CONTRAST",
        "3a. Post-activation: NO",
        "3b. Pre-activation: YES",
        "4. A SCALED SHORTCUT",
        "unit 1 branch -> unit 2 shortcut",
        "bit for bit",
        "SUMMARY: 33 of 33 identities hold",
    ] {
        assert!(text.contains(heading), "missing {heading:?} in\n{text}");
    }
    assert!(!text.contains("FAILED"), "{text}");
}

#[test]
fn derive_writes_json_atomically() {
    let dir = std::env::temp_dir().join(format!("resgrad-cli-derive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("derive.json");
    let out = resgrad(&[
        "derive",
        "--seed",
        "3",
        "--batch",
        "3",
        "--width",
        "5",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["config"]["seed"], 3);
    assert_eq!(v["all_passed"], true);
    assert_eq!(v["params"]["layers"].as_array().unwrap().len(), 5);
    assert_eq!(v["forms"].as_array().unwrap().len(), 4);
    let terms = v["forms"][0]["dx1"]["terms"].as_array().unwrap();
    assert_eq!(terms.len(), 4);
    assert_eq!(terms[0]["value"].as_array().unwrap().len(), 3 * 5);
    let checks = v["checks"].as_array().unwrap();
    assert!(checks
        .iter()
        .all(|c| c["passed"] == true && c["measured"].is_number()));
    // only the JSON is left in the directory: the temp file was renamed
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn derive_rejects_bad_sizes_with_exit_2() {
    let out = resgrad(&["derive", "--width", "0"]);
    assert_eq!(out.status.code(), Some(2));
}
