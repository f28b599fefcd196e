//! `run_as`: the account the server works as, and the switch to it.
//!
//! Port 25 needs root (or `CAP_NET_BIND_SERVICE`); reading mail does not. Started as root with
//! `run_as = "relayward"`, `serve` binds its listeners and reads the configured TLS key files
//! as root, then sets its groups, group and user to that account before it accepts a
//! connection, opens the queue or writes a file, so everything it creates belongs to that
//! account and it can go on writing it. The syscalls are nix's (no `unsafe` here).
//!
//! The same account answers "who will write `data_dir`?" for `check-config` and `serve`'s
//! checks before start ([`Account::can_write_dir`], [`Account::can_read`]): Unix permission
//! bits, judged for that account's uid and groups without switching to it.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{Gid, Group, Uid, User};
use relayward_config::Config;

/// An account: who `serve` runs as (after the switch, if any).
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub group: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Every group of the account, the primary one included.
    pub groups: Vec<Gid>,
}

/// What `run_as` asks for, judged against the process that reads it.
pub enum Switch {
    /// No `run_as`: the server runs as whoever started it.
    Stay(Account),
    /// Started as root: switch to this account after binding.
    To(Account),
    /// `run_as` names the account the process already runs as (say, systemd's `User=`).
    AlreadyThere(Account),
}

impl Switch {
    /// The account that will write `data_dir` and read files after start-up.
    pub fn account(&self) -> &Account {
        match self {
            Switch::Stay(account) | Switch::To(account) | Switch::AlreadyThere(account) => account,
        }
    }
}

/// Reads `run_as`/`run_as_group` for this process. Errors name the key and the fix.
pub fn plan(config: &Config) -> Result<Switch, (&'static str, String)> {
    let Some(name) = &config.run_as else {
        return Ok(Switch::Stay(current()));
    };
    let account = lookup(name, config.run_as_group.as_deref())?;
    let euid = Uid::effective();
    if euid == account.uid {
        Ok(Switch::AlreadyThere(account))
    } else if euid.is_root() {
        Ok(Switch::To(account))
    } else {
        Err((
            "run_as",
            format!(
                "run_as = {name:?} needs relayward serve to be started as root (it binds the listeners, then becomes {name}); this process runs as uid {euid}. Start it as root, or remove run_as and start it as {name} (with CAP_NET_BIND_SERVICE for ports below 1024, as contrib/relayward.service does)"
            ),
        ))
    }
}

/// The account `name` (and `group`, default its primary group) from the system's databases.
fn lookup(name: &str, group: Option<&str>) -> Result<Account, (&'static str, String)> {
    let user = User::from_name(name)
        .map_err(|e| ("run_as", format!("cannot look up user {name:?}: {e}")))?
        .ok_or_else(|| {
            (
                "run_as",
                format!("no user {name:?} on this system; create it (e.g. `useradd --system --home-dir /var/lib/relayward --shell /usr/sbin/nologin {name}`) or name another"),
            )
        })?;
    let (gid, group_name) = match group {
        Some(group) => {
            let found = Group::from_name(group)
                .map_err(|e| ("run_as_group", format!("cannot look up group {group:?}: {e}")))?
                .ok_or_else(|| {
                    (
                        "run_as_group",
                        format!("no group {group:?} on this system; create it (`groupadd --system {group}`) or remove run_as_group to use {name}'s own group"),
                    )
                })?;
            (found.gid, found.name)
        }
        None => (user.gid, group_name(user.gid)),
    };
    let groups = supplementary_groups(name, gid);
    Ok(Account {
        name: user.name,
        group: group_name,
        uid: user.uid,
        gid,
        groups,
    })
}

/// `name`'s groups with `gid` first; just `gid` when the system cannot list them.
fn supplementary_groups(name: &str, gid: Gid) -> Vec<Gid> {
    let listed = CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, gid).ok())
        .unwrap_or_default();
    let mut groups = vec![gid];
    groups.extend(listed.into_iter().filter(|g| *g != gid));
    groups
}

fn group_name(gid: Gid) -> String {
    Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| gid.to_string())
}

/// The account this process runs as now.
pub fn current() -> Account {
    let uid = Uid::effective();
    let gid = Gid::effective();
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let mut groups = vec![gid];
    groups.extend(
        nix::unistd::getgroups()
            .unwrap_or_default()
            .into_iter()
            .filter(|g| *g != gid),
    );
    Account {
        name,
        group: group_name(gid),
        uid,
        gid,
        groups,
    }
}

impl Account {
    /// Becomes this account for good: supplementary groups, group, then user (in that order:
    /// after `setuid` the others are no longer allowed), and checks it took.
    pub fn become_it(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        nix::unistd::setgroups(&self.groups).context("setgroups")?;
        nix::unistd::setgid(self.gid).context("setgid")?;
        nix::unistd::setuid(self.uid).context("setuid")?;
        if Uid::effective() != self.uid
            || Uid::current() != self.uid
            || Gid::effective() != self.gid
        {
            anyhow::bail!("the switch to {} did not take", self.name);
        }
        // Root can setuid back; an account that could was not left.
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() && !self.uid.is_root() {
            anyhow::bail!("could switch back to root after becoming {}", self.name);
        }
        Ok(())
    }

    /// `Ok` when this account can create and write `dir` (or it exists and it can write
    /// there); otherwise what stops it and how to fix it.
    pub fn can_write_dir(&self, dir: &Path) -> Result<(), String> {
        let existing = nearest_existing(dir);
        self.can_reach(&existing)?;
        let meta = std::fs::metadata(&existing)
            .map_err(|e| format!("cannot inspect {}: {e}", existing.display()))?;
        if !meta.is_dir() {
            return Err(format!(
                "{} exists and is not a directory",
                existing.display()
            ));
        }
        if self.may(&meta, 0o3) {
            return Ok(());
        }
        let fix = if existing == dir {
            format!("chown -R {}:{} {}", self.name, self.group, dir.display())
        } else {
            format!(
                "create it for {0}: install -d -o {0} -g {1} -m 0700 {2}",
                self.name,
                self.group,
                dir.display()
            )
        };
        Err(format!(
            "{} is not writable by {} (uid {}): {} is owned by {} with mode {:04o}; {fix}",
            dir.display(),
            self.name,
            self.uid,
            existing.display(),
            owner(&meta),
            meta.permissions().mode() & 0o7777,
        ))
    }

    /// `Ok` when this account can read `file`.
    pub fn can_read(&self, file: &Path) -> Result<(), String> {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.can_reach(parent)?;
        }
        let meta =
            std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if self.may(&meta, 0o4) {
            return Ok(());
        }
        Err(format!(
            "{} is not readable by {} (uid {}): owned by {} with mode {:04o}; make it readable, e.g. chgrp {} {} && chmod g+r {}",
            file.display(),
            self.name,
            self.uid,
            owner(&meta),
            meta.permissions().mode() & 0o7777,
            self.group,
            file.display(),
            file.display()
        ))
    }

    /// Every directory from `/` down to `dir` must let this account through (search bit).
    fn can_reach(&self, dir: &Path) -> Result<(), String> {
        let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        for ancestor in absolute.ancestors().collect::<Vec<_>>().into_iter().rev() {
            let Ok(meta) = std::fs::metadata(ancestor) else {
                break;
            };
            if meta.is_dir() && !self.may(&meta, 0o1) {
                return Err(format!(
                    "{} cannot enter {} (owned by {}, mode {:04o}), so it cannot reach {}",
                    self.name,
                    ancestor.display(),
                    owner(&meta),
                    meta.permissions().mode() & 0o7777,
                    dir.display()
                ));
            }
        }
        Ok(())
    }

    /// Whether the permission bits `want` (r=4, w=2, x=1) of the owner, group or other class
    /// that applies to this account are all set. Root may do anything.
    fn may(&self, meta: &std::fs::Metadata, want: u32) -> bool {
        if self.uid.is_root() {
            return true;
        }
        let mode = meta.permissions().mode();
        let bits = if meta.uid() == self.uid.as_raw() {
            mode >> 6
        } else if self.groups.iter().any(|g| g.as_raw() == meta.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }
}

/// `dir` if it exists, else its nearest existing ancestor (`.` for a relative path).
fn nearest_existing(dir: &Path) -> PathBuf {
    let mut candidate = dir.to_path_buf();
    loop {
        if candidate.exists() {
            return candidate;
        }
        match candidate.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => candidate = parent.to_path_buf(),
            _ => return PathBuf::from("."),
        }
    }
}

fn owner(meta: &std::fs::Metadata) -> String {
    let user = User::from_uid(Uid::from_raw(meta.uid()))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| meta.uid().to_string());
    format!("{user}:{}", group_name(Gid::from_raw(meta.gid())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Account {
        Account {
            name: "nobody".into(),
            group: "nogroup".into(),
            uid: Uid::from_raw(65534),
            gid: Gid::from_raw(65534),
            groups: vec![Gid::from_raw(65534)],
        }
    }

    #[test]
    fn a_private_directory_of_someone_else_is_not_writable() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        if current().uid.is_root() || current().uid == nobody().uid {
            // Owned by root (this machine runs tests as root): nobody may not write it.
            let why = nobody()
                .can_write_dir(&dir.path().join("data"))
                .expect_err("refused");
            assert!(
                why.contains("cannot enter") || why.contains("not writable"),
                "{why}"
            );
            assert!(why.contains("nobody"), "{why}");
        }
        assert!(current().can_write_dir(&dir.path().join("data")).is_ok());
    }

    #[test]
    fn an_open_directory_is_writable_and_a_file_is_not_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
        assert!(nobody().can_write_dir(&dir.path().join("new")).is_ok());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("write");
        let why = current().can_write_dir(&file).expect_err("not a directory");
        assert!(why.contains("not a directory"), "{why}");
    }
}
