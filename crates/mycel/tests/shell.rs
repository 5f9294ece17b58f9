//! What the CLI generates about itself: shell completions and the man page.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

fn mycel(args: &[&str]) -> String {
    let out = Command::new(support::mycel_bin())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_completion_knows_the_subcommands_and_is_valid_bash() {
    let script = mycel(&["completions", "bash"]);
    for word in ["deploy", "rollback", "doctor", "--max-unavailable"] {
        assert!(script.contains(word), "no {word} in the completion script");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &script).unwrap();
    let checked = Command::new("bash")
        .arg("-n")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    for shell in ["zsh", "fish"] {
        assert!(mycel(&["completions", shell]).contains("deploy"), "{shell}");
    }
}

#[test]
fn the_man_page_is_roff_naming_every_subcommand() {
    let page = mycel(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH mycel"),
        "{}",
        &page[..200.min(page.len())]
    );
    for word in ["push", "deploy", "doctor", "federate"] {
        assert!(page.contains(word), "no {word} in the man page");
    }
}
