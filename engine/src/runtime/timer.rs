//! A hashed timer wheel, one per worker.
//!
//! Each connection has at most one live entry: its earliest deadline. Activity does not touch
//! the wheel (a received byte only updates the connection's `last_rx`); when an entry fires,
//! the worker recomputes the connection's deadline from its state and either acts or
//! schedules again. So the per-message cost is one store, and the wheel holds one entry per
//! connection, as uWebSockets' 1-byte tick does, without sweeping every socket.

/// A duration in milliseconds, saturating: `Duration::MAX` (or any "never" too large for a
/// u64 of milliseconds) stays far in the future instead of wrapping into the past. Add it to
/// a time with `saturating_add`.
pub(crate) fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Slots in the wheel; with 100 ms ticks one revolution is 51.2 s.
const SLOTS: usize = 512;
/// The last tick an [`Entry`] can name (69 years of ticks of a millisecond or more).
const LAST_TICK: u64 = u32::MAX as u64 * SLOTS as u64 + (SLOTS as u64 - 1);

/// 12 bytes, not 16: the due tick is `rev * SLOTS` plus the index of the slot that holds
/// the entry (a u32 of revolutions lasts 2^32 * 512 ticks, 69 years at 1 ms a tick; a
/// later due tick is [`LAST_TICK`], which is never in practice).
#[derive(Clone, Copy, Debug)]
struct Entry {
    key: u32,
    gen: u32,
    rev: u32,
}

/// The wheel. Time is in ticks since the worker started.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    slots: Vec<Vec<Entry>>,
    /// The next tick to process.
    current: u64,
    len: usize,
}

impl TimerWheel {
    pub(crate) fn new() -> Self {
        TimerWheel {
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            current: 0,
            len: 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Schedules `(key, gen)` to fire at tick `due` (or at the next tick, if `due` is past;
    /// at [`LAST_TICK`] if later). Returns the tick it will fire at.
    pub(crate) fn schedule(&mut self, key: u32, gen: u32, due: u64) -> u64 {
        let due = due.max(self.current).min(LAST_TICK);
        let rev = (due / SLOTS as u64) as u32;
        self.slots[(due % SLOTS as u64) as usize].push(Entry { key, gen, rev });
        self.len += 1;
        due
    }

    /// Fires every entry due at or before tick `now`, into `out` as `(key, gen, due)`.
    pub(crate) fn expire(&mut self, now: u64, out: &mut Vec<(u32, u32, u64)>) {
        if now < self.current {
            return;
        }
        let steps = (now - self.current + 1).min(SLOTS as u64);
        for i in 0..steps {
            let index = (self.current + i) % SLOTS as u64;
            let slot = &mut self.slots[index as usize];
            let before = slot.len();
            slot.retain(|e| {
                let due = u64::from(e.rev) * SLOTS as u64 + index;
                if due <= now {
                    out.push((e.key, e.gen, due));
                    false
                } else {
                    true
                }
            });
            self.len -= before - slot.len();
            if slot.is_empty() && slot.capacity() > 64 {
                slot.shrink_to(16);
            }
        }
        self.current = now + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturate() {
        use std::time::Duration;
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(millis(Duration::from_secs(u64::MAX)), u64::MAX);
        assert_eq!(millis(Duration::from_millis(u64::MAX)), u64::MAX);
        // What deadline() does with a "never": the sum stays in the future.
        assert_eq!(7_000u64.saturating_add(millis(Duration::MAX)), u64::MAX);
    }

    #[test]
    fn fires_in_order_of_ticks_and_across_revolutions() {
        let mut w = TimerWheel::new();
        w.schedule(1, 0, 5);
        w.schedule(2, 0, 5 + SLOTS as u64); // same slot, next revolution
        w.schedule(3, 0, 0);
        let mut out = Vec::new();
        w.expire(4, &mut out);
        assert_eq!(out, vec![(3, 0, 0)]);
        out.clear();
        w.expire(5, &mut out);
        assert_eq!(out, vec![(1, 0, 5)]);
        out.clear();
        w.expire(5 + SLOTS as u64 - 1, &mut out);
        assert!(out.is_empty());
        w.expire(10_000, &mut out);
        assert_eq!(out, vec![(2, 0, 5 + SLOTS as u64)]);
        assert!(w.is_empty());
        // A due tick in the past fires on the next expire.
        w.schedule(4, 1, 3);
        out.clear();
        w.expire(10_001, &mut out);
        assert_eq!(out, vec![(4, 1, 10_001)]);
    }

    /// An entry keeps its due tick as revolutions (u32) and its slot: a tick far in the
    /// future (hours, years) comes back exact, and one past what it can name fires at
    /// `LAST_TICK` (and `schedule` says so, so the caller's copy of it matches).
    #[test]
    fn far_due_ticks_come_back_exact_or_at_the_last_tick() {
        let mut w = TimerWheel::new();
        let hour = 3_600_000 + 7;
        assert_eq!(w.schedule(1, 9, hour), hour);
        assert_eq!(w.schedule(2, 3, u64::MAX), LAST_TICK);
        let mut out = Vec::new();
        w.expire(hour - 1, &mut out);
        assert!(out.is_empty());
        w.expire(hour, &mut out);
        assert_eq!(out, vec![(1, 9, hour)]);
        out.clear();
        w.expire(LAST_TICK - 1, &mut out);
        assert!(out.is_empty());
        w.expire(LAST_TICK, &mut out);
        assert_eq!(out, vec![(2, 3, LAST_TICK)]);
        assert!(w.is_empty());
        assert_eq!(std::mem::size_of::<Entry>(), 12);
    }
}
