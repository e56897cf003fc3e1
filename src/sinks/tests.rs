//! The writer's order: whatever order concurrent writes land in, a
//! credential's files move only to a later decision's token.

use std::path::Path;

use super::*;
use crate::sinks::spec::{Format, OnRemove};

fn sink(path: &Path) -> Sink {
    Sink {
        path: path.to_path_buf(),
        format: Format::Token,
        mode: 0o600,
        uid: None,
        gid: None,
        on_remove: OnRemove::Delete,
    }
}

fn table(entries: &[(&str, &[&Path])]) -> Sinks {
    entries
        .iter()
        .map(|(name, paths)| {
            let list: Vec<Sink> = paths.iter().map(|p| sink(p)).collect();
            (name.to_string(), Arc::from(list))
        })
        .collect()
}

fn token(value: &str) -> Option<Current> {
    let mut cred = Credential::new("c", "p", None, 0);
    cred.access_token = Some(Secret::new(value));
    Current::of_credential(&cred)
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

#[tokio::test]
async fn a_late_write_of_an_earlier_decision_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let w = Writer::new(table(&[("c", &[&path])]));
    let (earlier, later) = (w.ticket(), w.ticket());
    assert!(w.write("c", later, token("new")).await.is_some());
    w.write("c", earlier, token("old")).await;
    assert_eq!(read(&path).as_deref(), Some("new"));
    // The same decision again (the owner catching up after a reload) is
    // written.
    w.write("c", later, token("new")).await;
    assert_eq!(read(&path).as_deref(), Some("new"));
    // No sinks: nothing written, and said so.
    assert!(w.write("other", w.ticket(), token("x")).await.is_none());
}

#[tokio::test]
async fn a_removal_loses_to_a_later_credential_and_beats_an_earlier_job() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let w = Writer::new(table(&[("c", &[&path])]));
    let (job, removal, re_added) = (w.ticket(), w.ticket(), w.ticket());
    w.write("c", re_added, token("again")).await;
    w.removed("c", removal).await;
    assert_eq!(read(&path).as_deref(), Some("again"));

    let (removal, job_after) = (w.ticket(), job);
    w.removed("c", removal).await;
    assert!(!path.exists());
    // A job of the removed credential that committed just before it.
    w.write("c", job_after, token("stale")).await;
    assert!(!path.exists());
}

#[tokio::test]
async fn a_reload_writes_its_new_sinks_with_the_newest_token() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, x) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("x"),
    );
    let w = Writer::new(table(&[("c", &[&a])]));
    let before = w.version();
    w.write("c", w.ticket(), token("newest")).await;
    let same = table(&[("c", &[&a])]);
    assert!(w.set(&same).is_empty());
    assert_eq!(w.version(), before);

    let added = w.set(&table(&[("c", &[&a, &b]), ("d", &[&x])]));
    assert_ne!(w.version(), before);
    let names: Vec<(&str, usize)> = added.iter().map(|(n, l)| (n.as_str(), l.len())).collect();
    assert_eq!(names, [("c", 1), ("d", 1)]);
    for (name, list) in added {
        // What is published may lag a job's write that is on its way.
        w.write_added(&name, list, token("published")).await;
    }
    assert_eq!(read(&b).as_deref(), Some("newest"));
    assert_eq!(read(&x).as_deref(), Some("published"));

    // A sink that leaves the list keeps its file, and gets no new token.
    assert!(w.set(&table(&[("c", &[&b])])).is_empty());
    w.write("c", w.ticket(), token("next")).await;
    assert_eq!(read(&a).as_deref(), Some("newest"));
    assert_eq!(read(&b).as_deref(), Some("next"));
    assert!(!w.has("d"));
}

#[tokio::test]
async fn a_stuck_write_is_waited_for_a_while_and_stays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let w = Writer::new(table(&[("c", &[&path])]));
    // The credential's lock held elsewhere: its writes hang, as on a stuck
    // file system.
    let held = w.lookup("c").unwrap().written;
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _guard = held.lock().unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
    });
    locked.recv().unwrap();
    let started = std::time::Instant::now();
    let stuck = w.ticket();
    assert!(w.write("c", stuck, token("stuck")).await.is_some());
    assert!(started.elapsed() >= WAIT, "{:?}", started.elapsed());
    assert!(!path.exists());
    // The next decision, once the file system is back, whichever write
    // gets there first.
    let next = w.ticket();
    release.send(()).unwrap();
    holder.join().unwrap();
    w.write("c", next, token("next")).await;
    assert_eq!(read(&path).as_deref(), Some("next"));
}
