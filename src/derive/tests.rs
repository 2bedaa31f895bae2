//! Tests of the derivation: every identity holds, the verifier can fail,
//! the JSON round-trips.

use super::*;

fn cfg(seed: u64) -> DeriveConfig {
    DeriveConfig {
        seed,
        ..DeriveConfig::default()
    }
}

#[test]
fn every_identity_holds_for_several_seeds_and_sizes() {
    for seed in 0..8 {
        let d = derive(&cfg(seed)).unwrap();
        assert!(d.all_passed, "seed {seed}: {:?}", d.result());
        assert_eq!(d.checks.len(), 7 + 10 + 2 * 8);
    }
    for (batch, width) in [(1, 1), (1, 3), (3, 6), (16, 32)] {
        let d = derive(&DeriveConfig {
            seed: 7,
            batch,
            width,
        })
        .unwrap();
        assert!(d.all_passed, "N={batch} d={width}: {:?}", d.result());
    }
}

#[test]
fn shortcut_terms_are_what_the_forms_promise() {
    let d = derive(&cfg(3)).unwrap();
    let post = &d.forms[0];
    // post-act: the mask is 0/1 and the direct term is zero where it is 0
    assert!(post.gain5.iter().all(|&m| m == 0.0 || m == 1.0));
    let direct = &post.dx3.terms[0].value;
    for ((&v, &m), &g) in direct.iter().zip(&post.gain5).zip(&post.dl_dx5) {
        assert_eq!(v, if m == 1.0 { g } else { 0.0 });
    }
    // pre-act lambda = 1: exactly dL/dx5 (bits), lambda = 2: 4 dL/dx5
    assert_eq!(d.forms[1].form, Form::PreAct { lambda: 1.0 });
    assert_eq!(d.forms[1].dx1.terms[0].value, d.forms[1].dl_dx5);
    let f2 = &d.forms[3];
    assert_eq!(f2.form, Form::PreAct { lambda: 2.0 });
    let want: Vec<f64> = f2.dl_dx5.iter().map(|g| 4.0 * g).collect();
    assert_eq!(f2.dx1.terms[0].value, want);
}

#[test]
fn the_verifier_catches_a_dropped_or_wrong_term() {
    let d = derive(&cfg(1)).unwrap();
    assert!(d.all_passed);
    // drop the shortcut term of dL/dx3 in the post-act form
    let mut bad = d.clone();
    bad.forms[0].dx3.terms[0]
        .value
        .iter_mut()
        .for_each(|v| *v = 0.0);
    bad.reverify();
    assert!(!bad.all_passed);
    let failed: Vec<&Check> = bad.checks.iter().filter(|c| !c.passed).collect();
    assert!(
        failed.iter().any(|c| c.identity.contains("add up")),
        "{failed:?}"
    );
    assert!(matches!(bad.result(), Err(Error::Check(_))));
    // drop the branch->branch path of dL/dx1 in the lambda = 1 form
    let mut bad = d.clone();
    bad.forms[1].dx1.terms[3]
        .value
        .iter_mut()
        .for_each(|v| *v = 0.0);
    bad.reverify();
    assert!(bad
        .checks
        .iter()
        .any(|c| !c.passed && c.identity.starts_with("dL/dx1 = 1^2")));
    // claim the identity shortcut through a post-act mask: off by one ulp is caught
    let mut bad = d.clone();
    let g = &mut bad.forms[1].dx3.terms[0].value;
    let i = g.iter().position(|v| *v != 0.0).unwrap();
    g[i] = f64::from_bits(g[i].to_bits() + 1);
    bad.reverify();
    assert!(bad
        .checks
        .iter()
        .any(|c| !c.passed && c.identity.contains("bit for bit")));
    // a backprop gradient off by 1e-4 relative fails finite differences
    let mut bad = d;
    bad.forms[2]
        .dx1
        .backprop
        .iter_mut()
        .for_each(|v| *v *= 1.0 + 1e-4);
    bad.reverify();
    assert!(bad
        .checks
        .iter()
        .any(|c| !c.passed && c.identity.contains("finite differences")));
}

#[test]
fn json_round_trip_parses_and_reverifies() {
    let d = derive(&cfg(5)).unwrap();
    let dir = std::env::temp_dir().join(format!("resgrad-derive-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("derive.json");
    write_json(&d, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut back: Derivation = serde_json::from_str(&text).unwrap();
    assert_eq!(back.config, d.config);
    assert_eq!(back.params.layers.len(), 5);
    assert_eq!(back.forms.len(), 4);
    assert_eq!(back.checks.len(), d.checks.len());
    let close = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-15 * x.abs().max(1.0))
    };
    assert!(close(&back.forms[0].dx1.backprop, &d.forms[0].dx1.backprop));
    assert!(close(
        &back.params.layers[0].weight,
        &d.params.layers[0].weight
    ));
    back.reverify();
    assert!(back.all_passed, "{:?}", back.result());
    // no temp file left behind
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(left.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_sizes_are_config_errors() {
    assert!(matches!(
        derive(&DeriveConfig { batch: 0, ..cfg(0) }),
        Err(Error::Config(_))
    ));
    assert!(matches!(
        derive(&DeriveConfig {
            width: 33,
            ..cfg(0)
        }),
        Err(Error::Config(_))
    ));
}
