//! The docs against the code: every `atmosphere …` command in a `sh` block of the README and
//! `docs/` names a real subcommand and only flags it has (checked against the binary's own
//! `--help`); every route the API serves is listed in `docs/API.md`; the unit `service install`
//! writes runs this binary with the given config, and an existing different unit is kept.

use std::path::{Path, PathBuf};

use crate::kit::{BIN, cli, cli_fails};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `atmosphere …` lines of the ```sh blocks of a Markdown file.
fn commands(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if let Some(lang) = trimmed.strip_prefix("```") {
            in_sh = !in_sh && lang == "sh";
            continue;
        }
        if in_sh {
            let command = trimmed.strip_prefix("sudo ").unwrap_or(trimmed);
            if command.starts_with("atmosphere ") {
                out.push(command.to_owned());
            }
        }
    }
    out
}

/// Splits a shell line into words (double quotes group; no other shell syntax in the docs).
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
            '#' if !quoted && word.is_empty() => break,
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

#[test]
fn every_documented_command_and_flag_exists() {
    let mut checked = 0;
    for doc in ["README.md", "docs/QUICKSTART.md", "docs/DEMO.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for line in commands(&text) {
            let words = words(&line);
            // The subcommand path: words before the first flag or argument that is not a
            // subcommand (found by asking --help of each prefix).
            let mut path: Vec<&str> = Vec::new();
            for word in &words[1..] {
                if word.starts_with('-') {
                    break;
                }
                let mut probe: Vec<&str> = path.clone();
                probe.push(word);
                probe.push("--help");
                let ok = std::process::Command::new(BIN)
                    .args(&probe)
                    .output()
                    .unwrap()
                    .status
                    .success();
                if !ok {
                    break;
                }
                path.push(word);
            }
            assert!(!path.is_empty(), "{doc}: `{line}` names no subcommand");
            let mut help_args = path.clone();
            help_args.push("--help");
            let help = cli(&help_args);
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(flag),
                    "{doc}: `{line}`: `atmosphere {}` has no {flag}",
                    path.join(" ")
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} commands found in the docs");
}

#[test]
fn every_route_is_in_the_api_doc() {
    let source = std::fs::read_to_string(root().join("crates/node/src/api.rs")).unwrap();
    let doc = std::fs::read_to_string(root().join("docs/API.md")).unwrap();
    let mut routes = 0;
    for part in source.split(".route(\"").skip(1) {
        let path = part.split('"').next().unwrap();
        assert!(
            doc.contains(&format!("`{path}`")),
            "docs/API.md does not list {path}"
        );
        routes += 1;
    }
    assert!(routes >= 30, "found only {routes} routes");
}

#[test]
fn service_install_writes_a_unit_that_runs_this_binary() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("atmosphere.toml");
    std::fs::write(&config, "name = \"pi\"\n").unwrap();
    let units = dir.path().join("units");
    let args = |extra: &[&str]| {
        let mut args = vec![
            "service".to_owned(),
            "install".into(),
            "--config".into(),
            config.display().to_string(),
            "--unit-dir".into(),
            units.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let first = args(&[]);
    let out = cli(&first.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("systemctl daemon-reload"), "{out}");
    let unit = std::fs::read_to_string(units.join("atmosphere.service")).unwrap();
    let exec = format!("ExecStart={} serve --config {}", BIN, config.display());
    assert!(unit.contains(&exec), "{unit}");
    assert!(unit.contains("Restart=on-failure") && unit.contains("WantedBy=multi-user.target"));
    // Again, the same: fine. Different (another account) without --force: refused, kept.
    cli(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let other = args(&["--run-as", "atmosphere"]);
    let err = cli_fails(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(units.join("atmosphere.service")).unwrap(),
        unit
    );
    // A missing config is named, with the fix.
    let err = cli_fails(&["service", "install", "--config", "/nonexistent.toml"]);
    assert!(err.contains("atmosphere config example"), "{err}");
}
