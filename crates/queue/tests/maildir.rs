//! Local delivery into Maildir: one file in new/, nothing in tmp/, hostile names refused.

use std::path::Path;

use relayward_queue::deliver_to_maildir;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn delivery_writes_one_file_in_new_and_nothing_in_tmp() {
    let root = tempfile::tempdir().unwrap();
    let content = b"Subject: hi\r\n\r\nbody\r\n";
    let path = deliver_to_maildir(root.path(), "Example.TEST", "Alice", content).unwrap();

    let maildir = root.path().join("example.test").join("Alice");
    assert_eq!(path.parent(), Some(maildir.join("new").as_path()));
    assert_eq!(names(&maildir), ["cur", "new", "tmp"]);
    assert_eq!(names(&maildir.join("new")).len(), 1);
    assert!(names(&maildir.join("tmp")).is_empty());
    assert!(names(&maildir.join("cur")).is_empty());
    assert_eq!(std::fs::read(&path).unwrap(), content);

    let second = deliver_to_maildir(root.path(), "example.test", "Alice", b"two\r\n").unwrap();
    assert_ne!(second, path);
    assert_eq!(names(&maildir.join("new")).len(), 2);
    assert!(names(&maildir.join("tmp")).is_empty());
}

#[test]
fn traversal_names_are_refused_and_nothing_is_written() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("mail");
    let bad = [
        ("example.test", ".."),
        ("example.test", "."),
        ("example.test", "../../escape"),
        ("example.test", "a/b"),
        ("example.test", "a\0b"),
        ("example.test", ""),
        ("..", "alice"),
        ("../..", "alice"),
        ("exa/mple.test", "alice"),
        ("example.test\0", "alice"),
        ("", "alice"),
        (".example.test", "alice"),
    ];
    for (domain, local) in bad {
        let result = deliver_to_maildir(&root, domain, local, b"x");
        assert!(
            result.is_err(),
            "accepted {domain:?} / {local:?}: {result:?}"
        );
        let err = result.unwrap_err();
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::InvalidInput,
            "{domain:?} / {local:?}"
        );
    }
    assert_eq!(
        names(base.path()),
        Vec::<String>::new(),
        "something was created"
    );
}

#[test]
fn maildirs_and_messages_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let root = tempfile::tempdir().unwrap();
    let mail = root.path().join("mail");
    let path = deliver_to_maildir(&mail, "example.test", "alice", b"x\r\n").unwrap();
    let maildir = mail.join("example.test").join("alice");
    for dir in [
        &mail,
        &mail.join("example.test"),
        &maildir,
        &maildir.join("new"),
    ] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
    }
    assert_eq!(mode(&path), 0o600);
}

/// Deliveries skip building the Maildir when it exists; one whose `new/` or `tmp/` vanished
/// (an admin's clean-up) must still land, not defer forever.
#[test]
fn a_maildir_missing_a_part_is_rebuilt_by_the_next_delivery() {
    let root = tempfile::tempdir().unwrap();
    let maildir = root.path().join("example.test").join("alice");
    deliver_to_maildir(root.path(), "example.test", "alice", b"one\r\n").unwrap();
    for part in ["new", "tmp"] {
        std::fs::remove_dir_all(maildir.join(part)).unwrap();
        let path = deliver_to_maildir(root.path(), "example.test", "alice", b"two\r\n").unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"two\r\n",
            "after removing {part}/"
        );
        assert_eq!(names(&maildir), ["cur", "new", "tmp"]);
        assert!(names(&maildir.join("tmp")).is_empty());
    }
}

/// Many deliveries into one Maildir at once (they share the flushes of its `new/`): every one
/// returns its own file, whole.
#[test]
fn concurrent_deliveries_to_one_maildir_all_land() {
    const DELIVERIES: usize = 24;
    let root = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(DELIVERIES));
    let threads: Vec<_> = (0..DELIVERIES)
        .map(|n| {
            let (root, barrier) = (root.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let content = format!("Subject: {n}\r\n\r\nbody {n}\r\n");
                let path =
                    deliver_to_maildir(root.path(), "example.test", "bob", content.as_bytes())
                        .unwrap();
                assert_eq!(std::fs::read(&path).unwrap(), content.as_bytes());
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let maildir = root.path().join("example.test").join("bob");
    assert_eq!(names(&maildir.join("new")).len(), DELIVERIES);
    assert!(names(&maildir.join("tmp")).is_empty());
}
