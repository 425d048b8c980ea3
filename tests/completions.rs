//! Shell completions and the manual page, generated from the command
//! definitions: they know every command and option, and they parse.

use crate::common;

use common::{text, BIN};
use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn completions_know_the_commands_and_parse() {
    let bash = run(&["completions", "bash"]);
    for word in [
        "plan",
        "apply",
        "destroy",
        "failover",
        "--target",
        "--var-file",
        "--detailed-exitcode",
    ] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ralph-deploy.bash");
    std::fs::write(&file, &bash).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", text(&check.stderr));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(run(&["completions", shell]).contains("apply"), "{shell}");
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("possible values"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_manual_page_has_every_command_and_its_options() {
    let man = run(&["man"]);
    assert!(
        man.contains(".TH ralph-deploy 1"),
        "{}",
        &man[..200.min(man.len())]
    );
    for section in [
        "RALPH-DEPLOY PLAN",
        "RALPH-DEPLOY APPLY",
        "RALPH-DEPLOY DESTROY",
        "RALPH-DEPLOY COMPLETIONS",
    ] {
        assert!(man.contains(section), "no section {section}");
    }
    assert!(man.contains("\\-\\-target") && man.contains("\\-\\-allow\\-protected"));
}
