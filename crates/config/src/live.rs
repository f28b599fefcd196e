//! A value a configuration reload replaces: what each part of the server holds instead of the
//! configuration itself.
//!
//! `relayward serve` keeps one immutable snapshot of everything built from the configuration
//! file and swaps it whole on SIGHUP. The listeners, the sessions and the delivery runner each
//! need their own part of it; a [`Live`] reads that part from the current snapshot, so one swap
//! reaches all of them at once, and nobody can hold a part of an old snapshot longer than the
//! work it started with it.

use std::fmt;
use std::sync::Arc;

/// The current value of a part of the running configuration. Cheap to clone.
pub struct Live<T: ?Sized> {
    read: Arc<dyn Fn() -> Arc<T> + Send + Sync>,
}

impl<T: ?Sized + Send + Sync + 'static> Live<T> {
    /// A part that `read` takes from the current snapshot.
    pub fn new(read: impl Fn() -> Arc<T> + Send + Sync + 'static) -> Self {
        Self {
            read: Arc::new(read),
        }
    }

    /// A value that never changes (tests, one-shot commands).
    pub fn fixed(value: Arc<T>) -> Self {
        Self::new(move || Arc::clone(&value))
    }

    /// The value now. Take it once per unit of work (a session, a delivery attempt) and use
    /// that, so one piece of work never mixes two configurations.
    pub fn current(&self) -> Arc<T> {
        (self.read)()
    }
}

impl<T: ?Sized> Clone for Live<T> {
    fn clone(&self) -> Self {
        Self {
            read: Arc::clone(&self.read),
        }
    }
}

impl<T: ?Sized> fmt::Debug for Live<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Live(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn reads_follow_the_swapped_value() {
        let current = Arc::new(Mutex::new(Arc::new(1)));
        let source = Arc::clone(&current);
        let live: Live<i32> = Live::new(move || Arc::clone(&source.lock().unwrap()));
        let clone = live.clone();
        assert_eq!(*live.current(), 1);
        *current.lock().unwrap() = Arc::new(2);
        assert_eq!(*clone.current(), 2);
        assert_eq!(*Live::fixed(Arc::new(7)).current(), 7);
    }
}
