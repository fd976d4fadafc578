//! The local engine's memory pool: DataFusion's fair spill policy with headroom kept for the operators that
//! cannot spill.
//!
//! Why not DataFusion's own pools: with `GreedyMemoryPool` (what `with_memory_limit` builds) the spilling
//! operators (an aggregation's hash table, a sort) may take the whole limit between them; the next small
//! allocation of an operator that cannot spill (a `RepartitionExec`'s buffered batch, a sort's merge buffer) then
//! fails the query with "Resources exhausted" even though the aggregation would have spilled had it been asked.
//! Measured at 11M rows: validation's `orphan_edges` failed this way under a 256 MB and a 512 MB limit.
//! `FairSpillPool` divides the spilling part by every registered spilling consumer, busy or not: a query of
//! several sort-merge joins registers a hundred sorts, and each got 1.7 MB of a 256 MB limit, less than one
//! batch (a Redis run's `sorted_set_order` failed so). Here spilling operators share at most half of the limit,
//! fairly among those that hold memory now (one that is refused spills what it holds and asks
//! again; first come first served instead starved one partition of an aggregation, whose input then piled up
//! in its repartition buffers until they ran out too), and the rest is always there for those that cannot
//! spill; past the whole limit, either kind fails.

use std::collections::HashMap;
use std::sync::Mutex;

use datafusion::common::{resources_datafusion_err, Result};
use datafusion::execution::memory_pool::{
    human_readable_size, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The part of the limit that spilling operators may hold together: half. An aggregation that spills copies
/// what it holds twice more (the groups emitted as one batch, then sorted) before writing it: with three
/// quarters, validation at 11M rows peaked at 614 MB under a 256 MB limit, with half at 377 MB, as fast.
const SPILL_SHARE_NUM: usize = 1;
const SPILL_SHARE_DEN: usize = 2;

#[derive(Debug)]
pub struct HeadroomPool {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    spillable: usize,
    unspillable: usize,
    /// What each spilling consumer holding memory holds, by consumer id.
    spillers: HashMap<usize, usize>,
}

impl State {
    fn add(&mut self, reservation: &MemoryReservation, bytes: usize) {
        if reservation.consumer().can_spill() {
            self.spillable += bytes;
            *self
                .spillers
                .entry(reservation.consumer().id())
                .or_default() += bytes;
        } else {
            self.unspillable += bytes;
        }
    }

    fn sub(&mut self, reservation: &MemoryReservation, bytes: usize) {
        if reservation.consumer().can_spill() {
            self.spillable = self.spillable.saturating_sub(bytes);
            let id = reservation.consumer().id();
            if let Some(held) = self.spillers.get_mut(&id) {
                *held = held.saturating_sub(bytes);
                if *held == 0 {
                    self.spillers.remove(&id);
                }
            }
        } else {
            self.unspillable = self.unspillable.saturating_sub(bytes);
        }
    }
}

impl HeadroomPool {
    pub fn new(limit: usize) -> Self {
        HeadroomPool {
            limit,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked while holding it; the counters stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryPool for HeadroomPool {
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.state().add(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.state().sub(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut s = self.state();
        let whole = self.limit.saturating_sub(s.spillable + s.unspillable);
        let available = if reservation.consumer().can_spill() {
            // An equal part of the spilling share for each spiller holding memory (this one included), never
            // more than the pool has left. (A consumer may have several reservations: its part is for all.)
            let share = self.limit / SPILL_SHARE_DEN * SPILL_SHARE_NUM;
            let id = reservation.consumer().id();
            let held = s.spillers.get(&id).copied().unwrap_or(0);
            let busy = s.spillers.len() + usize::from(held == 0);
            (share / busy).saturating_sub(held).min(whole)
        } else {
            whole
        };
        if additional > available {
            return Err(resources_datafusion_err!(
                "Failed to allocate additional {} for {} with {} already allocated for this reservation - {} \
                 remain available for it",
                human_readable_size(additional),
                reservation.consumer().name(),
                human_readable_size(reservation.size()),
                human_readable_size(available)
            ));
        }
        s.add(reservation, additional);
        Ok(())
    }

    fn reserved(&self) -> usize {
        let s = self.state();
        s.spillable + s.unspillable
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;
    use std::sync::Arc;

    #[test]
    fn spillers_leave_headroom_for_operators_that_cannot_spill() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000));
        let spiller = |name: &str| {
            MemoryConsumer::new(name)
                .with_can_spill(true)
                .register(&pool)
        };
        let mut agg = spiller("aggregate");
        let mut repartition = MemoryConsumer::new("repartition").register(&pool);
        // Spilling operators get half, not the whole limit.
        agg.try_grow(500).unwrap();
        assert!(agg.try_grow(1).is_err());
        // What is left stays for the operator that cannot spill, up to the whole limit.
        repartition.try_grow(500).unwrap();
        assert!(repartition.try_grow(1).is_err());
        assert_eq!(pool.reserved(), 1000);
        agg.free();
        repartition.free();
        // Idle spillers take nothing from busy ones: of a hundred registered sorts, two sort, and share fairly.
        let mut sorts: Vec<_> = (0..100).map(|i| spiller(&format!("sort {i}"))).collect();
        sorts[0].try_grow(250).unwrap();
        assert!(sorts[1].try_grow(251).is_err());
        sorts[1].try_grow(250).unwrap();
        assert!(sorts[0].try_grow(1).is_err());
        // One that spilled (freed what it held) leaves the other the whole spilling part.
        sorts[1].free();
        sorts[0].try_grow(250).unwrap();
        repartition.try_grow(500).unwrap();
        drop(sorts);
        drop(repartition);
        drop(agg);
        assert_eq!(pool.reserved(), 0);
    }
}

/// Hands the memory the process freed back to the system (glibc's `malloc_trim`), between the SQL queries of a
/// stage: the Arrow buffers of one query are freed on other threads than those that allocated them, and glibc
/// keeps such memory in its arenas, so without this the resident size only grows over a sequence of queries
/// (validation's checks at 11M rows: 200 -> 550 MB, their own peak being well under the SQL limit). A few
/// milliseconds a call; nothing elsewhere.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
