//! Unit tests of the parser's reading of unit-file syntax and of the rendering helpers.

use super::*;

fn src(text: &str) -> Source {
    Source {
        path: "/etc/rsproxyd/t.proxy".into(),
        text: text.into(),
    }
}

const BASE: &str = "[Socket]\nListenStream=1\n[Proxy]\nTarget=127.0.0.1:2\n[Backend]\n";

/// A trailing backslash continues a line (comment lines inside are skipped); keys and values
/// are trimmed; `#` and `;` lines are comments.
#[test]
fn continuation_comments_and_trimming() {
    let text =
        format!("{BASE}ExecStart=/bin/echo a \\\n# inside\n  b\n; c\n  Environment =  X=1  \n");
    let spec = parse("t", &src(&text), &[]).expect("valid");
    let Backend::Generated { service, .. } = spec.backend else {
        panic!("generated backend expected")
    };
    assert_eq!(
        service,
        vec![
            Entry {
                key: "ExecStart".into(),
                value: "/bin/echo a  b".into()
            },
            Entry {
                key: "Environment".into(),
                value: "X=1".into()
            },
        ]
    );
}

/// An empty assignment in [Proxy] returns the key to its default, as in systemd.
#[test]
fn empty_value_resets_to_default() {
    let text = format!("{BASE}ExecStart=/bin/true\n[Proxy]\nExitIdleTime=1s\nExitIdleTime=\n");
    let spec = parse("t", &src(&text), &[]).expect("valid");
    assert_eq!(spec.proxy.exit_idle_time, "10min");
}

/// ExecStart= words with %, $, spaces or quotes reach rsproxyd unchanged.
#[test]
fn exec_start_quoting() {
    let text = format!("{BASE}ExecStart=/bin/true\n[Proxy]\nTarget=/run/a b/%i$x\".sock\n");
    let spec = parse("t", &src(&text), &[]).expect("valid");
    let out = render(&spec, false);
    let svc = &out.files[1].1;
    assert!(svc.contains(" \"/run/a b/%%i$$x\\\".sock\"\n"), "{svc}");
}

/// `name_of` accepts unit-name characters only and refuses names too long for the backend.
#[test]
fn names() {
    assert_eq!(name_of("my-app_1.x:y.proxy"), Ok("my-app_1.x:y"));
    assert!(name_of("a b.proxy").is_err());
    assert!(name_of("a@.proxy").is_err());
    assert!(name_of("a.conf").is_err());
    let long = format!("{}.proxy", "a".repeat(255 - "-backend.service".len()));
    assert!(name_of(&long).is_ok());
    let too_long = format!("{}.proxy", "a".repeat(256 - "-backend.service".len()));
    assert!(name_of(&too_long).is_err());
}

/// The [Backend] key list is sorted (it is binary-searched) and holds the usual keys.
#[test]
fn service_keys_sorted() {
    assert!(SERVICE_KEYS.windows(2).all(|w| w[0] < w[1]));
    for k in [
        "ExecStart",
        "Type",
        "User",
        "Environment",
        "WorkingDirectory",
        "MemoryMax",
    ] {
        assert!(SERVICE_KEYS.binary_search(&k).is_ok(), "{k}");
    }
}

fn proxy_unit(proxy_lines: &str) -> String {
    let text = format!("{BASE}ExecStart=/bin/true\n[Proxy]\n{proxy_lines}");
    let spec = parse("t", &src(&text), &[]).expect("valid");
    render(&spec, false).files[1].1.clone()
}

/// TimeoutStopSec= is DrainTimeout= plus the margin, infinity when the drain is unbounded.
#[test]
fn stop_timeout_follows_drain() {
    for (drain, want) in [
        ("", "45s"),
        ("DrainTimeout=500ms\n", "15500ms"),
        ("DrainTimeout=2min\n", "135s"),
        ("DrainTimeout=infinity\n", "infinity"),
    ] {
        let unit = proxy_unit(drain);
        assert!(
            unit.contains(&format!("\nTimeoutStopSec={want}\n")),
            "{drain:?}: {unit}"
        );
    }
}

/// The IP filter allows only localhost, plus a remote TARGET address; a TARGET host name
/// (other than localhost) gets no filter, since its addresses are unknown here.
#[test]
fn ip_filter_follows_target() {
    for (target, want) in [
        ("127.0.0.1:2", Some("localhost")),
        ("[::1]:2", Some("localhost")),
        ("localhost:2", Some("localhost")),
        ("/run/x.sock", Some("localhost")),
        ("@abstract", Some("localhost")),
        ("[2001:db8::1]:2", Some("localhost 2001:db8::1")),
        ("db.example:5432", None),
    ] {
        let unit = proxy_unit(&format!("Target={target}\n"));
        match want {
            Some(allow) => assert!(
                unit.contains(&format!("\nIPAddressAllow={allow}\nIPAddressDeny=any\n")),
                "{target}: {unit}"
            ),
            None => assert!(!unit.contains("\nIPAddressDeny="), "{target}: {unit}"),
        }
    }
}
