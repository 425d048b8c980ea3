//! What a person sees during an apply: a live view on a terminal (checked
//! on a real pseudo-terminal, in tmux), plain timestamped lines with
//! heartbeats when the output is a file or a pipe.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{text, SlowProxy, World};

/// The command as a shell line, its environment included.
fn shell_line(c: &Command) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = String::from("cd ");
    line.push_str(&q(&c.get_current_dir().unwrap().display().to_string()));
    line.push_str(" && env");
    // `env` takes its options (-u NAME) before the assignments.
    for (k, v) in c.get_envs() {
        if v.is_none() {
            line.push_str(&format!(" -u {}", k.to_str().unwrap()));
        }
    }
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            line.push_str(&format!(
                " {}={}",
                k.to_str().unwrap(),
                q(v.to_str().unwrap())
            ));
        }
    }
    line.push(' ');
    line.push_str(&q(c.get_program().to_str().unwrap()));
    for a in c.get_args() {
        line.push(' ');
        line.push_str(&q(a.to_str().unwrap()));
    }
    line
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    text(&out.stdout)
}

#[test]
fn a_terminal_sees_live_phases_and_elapsed_times_then_the_summary() {
    let name = format!("tty{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    // Every request a little slow, so the apply lasts a few seconds.
    let proxy = SlowProxy::start(&w.endpoint, Duration::from_millis(150));
    let stack = w.stack();
    let cmd = w.cmd_at(
        &proxy.endpoint,
        &[
            "apply",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
        ],
    );
    let script = w.dir.path().join("run.sh");
    std::fs::write(
        &script,
        format!("{}\necho \"EXIT=$?\"\nsleep 120\n", shell_line(&cmd)),
    )
    .unwrap();
    let session = format!("rd-{name}");
    let socket = w.dir.path().join("tmux.sock");
    let sock = socket.to_str().unwrap();
    tmux(&[
        "-S",
        sock,
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "50",
        &format!("TERM=xterm-256color bash {}", script.display()),
    ]);
    let started = Instant::now();
    let mut frames = Vec::new();
    let last = loop {
        std::thread::sleep(Duration::from_millis(100));
        let screen = tmux(&["-S", sock, "capture-pane", "-p", "-t", &session]);
        if screen.contains("EXIT=") {
            break screen;
        }
        frames.push(screen);
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no end: {frames:?}"
        );
    };
    tmux(&["-S", sock, "kill-server"]);

    // During the apply: a line per resource in flight with its phase and
    // elapsed time, and an overall line with the count and the time left.
    let phase = |l: &str| {
        let l = l.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        let mut parts = l.split(" · ");
        let head = parts.next().unwrap_or("");
        let rest: Vec<&str> = parts.collect();
        (head.ends_with(": creating") || head.ends_with(": updating"))
            && rest.last().is_some_and(|t| {
                let t = t.split(" of typically").next().unwrap();
                t.ends_with('s')
                    && t[..t.len() - 1]
                        .replace('.', "")
                        .chars()
                        .all(|c| c.is_ascii_digit())
            })
    };
    let live: Vec<&String> = frames.iter().filter(|f| f.lines().any(phase)).collect();
    assert!(
        !live.is_empty(),
        "no frame shows a resource in flight: {frames:#?}\n{last}"
    );
    assert!(
        live.iter().any(|f| f
            .lines()
            .any(|l| l.starts_with('[') && l.contains(" done] ") && l.contains("in flight"))),
        "no overall line: {live:#?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f.contains("nat_a: creating · EC2: pending")),
        "the cloud's own status of a long wait is shown: {frames:#?}"
    );
    // At the end the live lines are gone and the summary is the last word.
    let tail: Vec<&str> = last.lines().filter(|l| !l.trim().is_empty()).collect();
    let n = tail.len();
    assert!(
        tail[n - 2].starts_with("Apply complete: 19 created"),
        "{last}"
    );
    assert_eq!(tail[n - 1], "EXIT=0", "{last}");
    assert!(!last.contains("in flight"), "{last}");
    assert!(last.contains("✓ vpc: created vpc-"), "{last}");

    // Piped: plain lines with a time, no escape codes, and heartbeats for
    // what is still in flight after a quiet interval.
    let out = w
        .cmd_at(
            &proxy.endpoint,
            &[
                "destroy",
                stack.to_str().unwrap(),
                "--env",
                "production",
                "--auto-approve",
                "--allow-protected",
            ],
        )
        .env("RALPH_DEPLOY_HEARTBEAT", "0.3")
        .env("TERM", "xterm-256color")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in piped output: {err:?}"
    );
    assert!(
        !err.contains('\r'),
        "carriage returns in piped output: {err:?}"
    );
    let timed = |l: &str| {
        l.len() > 10 && l.as_bytes()[2] == b':' && l.as_bytes()[5] == b':' && &l[8..10] == "Z "
    };
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| timed(l) && l.ends_with("nat_a: deleting...")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| timed(l) && l.contains("nat_a: deleting") && l.ends_with("(still)")),
        "a heartbeat for the NAT gateway's long delete: {err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| timed(l) && l.contains(" done] ") && l.contains("waiting on dependencies")),
        "an overall heartbeat: {err}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("Destroy complete: 0 created"),
        "{err}"
    );
}
