//! `tokend completions` and `tokend man`: generated without a socket or a
//! configuration, and accepted by the tools that read them.

use std::process::Stdio;

use tokio::process::Command;

use crate::support::Run;

/// Runs the real binary with no socket, configuration or runtime dir.
async fn tokend(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(args)
        .env_remove("TOKEND_SOCKET")
        .env("HOME", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tokend");
    Run::from_output(&out)
}

#[tokio::test]
async fn completion_scripts_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let run = tokend(&["completions", shell]).await;
        run.ok();
        for command in ["get", "status", "git-credential", "completions", "man"] {
            assert!(run.stdout.contains(command), "{shell}: no {command}");
        }
    }
    // The bash script is valid bash.
    let script = tokend(&["completions", "bash"]).await.stdout;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokend.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .await
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_ne!(tokend(&["completions", "tcsh"]).await.code, 0);
}

#[tokio::test]
async fn the_manual_renders_with_every_command() {
    let run = tokend(&["man"]).await;
    run.ok();
    assert!(run.stdout.contains("\n.TH tokend 1 "), "no .TH header");
    for section in ["TOKEND GET", "TOKEND GIT-CREDENTIAL", "TOKEND REKEY"] {
        assert!(run.stdout.contains(section), "no {section}");
    }
    // groff renders it without a warning.
    if std::path::Path::new("/usr/bin/groff").exists() {
        use tokio::io::AsyncWriteExt;
        let mut groff = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = groff.stdin.take().unwrap();
        stdin.write_all(run.stdout.as_bytes()).await.unwrap();
        drop(stdin);
        let out = groff.wait_with_output().await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("Refresh first if the token would expire"),
            "{text}"
        );
    }

    // One page per command in a directory.
    let dir = tempfile::tempdir().unwrap();
    tokend(&["man", "--out", dir.path().to_str().unwrap()])
        .await
        .ok();
    for page in [
        "tokend.1",
        "tokend-get.1",
        "tokend-git-credential.1",
        "tokend-watch.1",
        "tokend-exec.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.contains(".TH"), "{page}");
    }
    // No pages for clap's `help` pseudo-command.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
    // The top page and one per command: 15, `help` left out.
    assert_eq!(names.len(), 16, "{names:?}");
}
