//! Password checks: argon2 verification in a few slots whose memory is allocated once.
//!
//! An argon2 check with the default parameters fills 19 MiB and a core for tens of
//! milliseconds. Nothing bounded how many ran at once (400 parallel wrong passwords held
//! 2.7 GB), and memory allocated and freed for each check is not given back to the system
//! either: glibc's heap keeps blocks that large once it has served one, so forty checks, even
//! two at a time, left 300 MiB behind. Here at most `slots` checks run at once, each in memory
//! that belongs to its slot and is reused by the next check: the server's memory for password
//! checks is bounded by slots × 19 MiB, whatever the attack.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The password check slots, shared by every session (see the module docs).
#[derive(Debug)]
pub struct PasswordChecks {
    slots: Semaphore,
    /// The memory of slots not in use, kept for the next check.
    memory: Mutex<Vec<Vec<Block>>>,
}

impl PasswordChecks {
    /// `slots` checks may run at once (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Semaphore::new(slots.max(1)),
            memory: Mutex::new(Vec::new()),
        }
    }

    /// A slot, waiting at most `wait` for one to come free; `None` when none did.
    pub async fn slot(&self, wait: Duration) -> Option<CheckSlot<'_>> {
        let permit = tokio::time::timeout(wait, self.slots.acquire())
            .await
            .ok()?
            .ok()?;
        let memory = self
            .memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        Some(CheckSlot {
            _permit: permit,
            memory,
            home: &self.memory,
        })
    }
}

/// Permission to run one password check, with the memory to run it in. Dropping it returns
/// both: the next waiting attempt gets the slot.
#[derive(Debug)]
pub struct CheckSlot<'a> {
    _permit: SemaphorePermit<'a>,
    memory: Vec<Block>,
    home: &'a Mutex<Vec<Vec<Block>>>,
}

impl CheckSlot<'_> {
    /// Whether `password` matches the argon2 PHC string `phc`. Runs on tokio's blocking pool
    /// in this slot's memory (grown when a hash asks for more than it has). An unusable hash
    /// never matches.
    pub async fn matches(&mut self, phc: String, password: Vec<u8>) -> bool {
        let mut memory = std::mem::take(&mut self.memory);
        let checked = tokio::task::spawn_blocking(move || {
            let matched = matches_in(&phc, &password, &mut memory);
            (matched, memory)
        })
        .await;
        match checked {
            Ok((matched, memory)) => {
                self.memory = memory;
                matched
            }
            Err(e) => {
                tracing::error!("password verification task failed: {e}");
                false
            }
        }
    }
}

impl Drop for CheckSlot<'_> {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.home
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(memory);
    }
}

/// argon2 verification as `PasswordVerifier` does it (hash the password with the salt and
/// parameters of `phc`, compare in constant time), but in `memory` instead of a fresh
/// allocation.
fn matches_in(phc: &str, password: &[u8], memory: &mut Vec<Block>) -> bool {
    let hash = match PasswordHash::new(phc) {
        Ok(hash) => hash,
        Err(e) => {
            tracing::warn!("unusable password hash in configuration: {e}");
            return false;
        }
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::new(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    let mut computed = vec![0u8; expected.as_bytes().len()];
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(
            password,
            salt.as_ref(),
            &mut computed,
            &mut memory[..blocks],
        )
        .is_err()
    {
        return false;
    }
    // `Output` compares in constant time: the time taken reveals nothing of the hash.
    argon2::password_hash::phc::Output::new(&computed).is_ok_and(|output| output == *expected)
}
