//! The local engine's memory pool: DataFusion's fair spill policy with headroom kept for the operators that
//! cannot spill.
//!
//! Why not DataFusion's own pools: with `GreedyMemoryPool` (what `with_memory_limit` builds) or `FairSpillPool`,
//! the spilling operators (an aggregation's hash table, a sort) may take the whole limit between them; the next
//! small allocation of an operator that cannot spill (a `RepartitionExec`'s buffered batch, a hash join's build
//! side) then fails the query with "Resources exhausted" even though the aggregation would have spilled had it
//! been asked. Measured at 11M rows: validation's `orphan_edges` failed this way under a 256 MB and a 512 MB
//! limit. Here spilling operators share at most `SPILL_SHARE` of the limit (fairly, as in `FairSpillPool`), so
//! the rest of it is always there for those that cannot spill; past the whole limit, either kind fails.

use std::sync::Mutex;

use datafusion::common::{resources_datafusion_err, Result};
use datafusion::execution::memory_pool::{
    human_readable_size, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The part of the limit that spilling operators may hold together: three quarters.
const SPILL_SHARE_NUM: usize = 3;
const SPILL_SHARE_DEN: usize = 4;

#[derive(Debug)]
pub struct HeadroomPool {
    limit: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consumers that can spill, registered now.
    spillers: usize,
    spillable: usize,
    unspillable: usize,
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
    fn register(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            self.state().spillers += 1;
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if consumer.can_spill() {
            let mut s = self.state();
            s.spillers = s.spillers.saturating_sub(1);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        let mut s = self.state();
        if reservation.consumer().can_spill() {
            s.spillable += additional;
        } else {
            s.unspillable += additional;
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let mut s = self.state();
        if reservation.consumer().can_spill() {
            s.spillable = s.spillable.saturating_sub(shrink);
        } else {
            s.unspillable = s.unspillable.saturating_sub(shrink);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let mut s = self.state();
        let whole = self.limit.saturating_sub(s.spillable + s.unspillable);
        let available = if reservation.consumer().can_spill() {
            // Each spiller's fair part of what spilling may hold, never more than the pool has left.
            let share = (self.limit / SPILL_SHARE_DEN * SPILL_SHARE_NUM)
                .min(self.limit.saturating_sub(s.unspillable));
            let mine = (share / s.spillers.max(1)).saturating_sub(reservation.size());
            mine.min(whole)
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
        if reservation.consumer().can_spill() {
            s.spillable += additional;
        } else {
            s.unspillable += additional;
        }
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
    use std::sync::Arc;

    #[test]
    fn spillers_leave_headroom_for_operators_that_cannot_spill() {
        let pool: Arc<dyn MemoryPool> = Arc::new(HeadroomPool::new(1000));
        let mut agg = MemoryConsumer::new("aggregate")
            .with_can_spill(true)
            .register(&pool);
        let mut repartition = MemoryConsumer::new("repartition").register(&pool);
        // One spiller alone gets three quarters, not the whole limit.
        agg.try_grow(750).unwrap();
        assert!(agg.try_grow(1).is_err());
        // What is left stays for the operator that cannot spill, up to the whole limit.
        repartition.try_grow(250).unwrap();
        assert!(repartition.try_grow(1).is_err());
        assert_eq!(pool.reserved(), 1000);
        // A second spiller shares the spilling part fairly: nothing while the first holds its half and more.
        let mut sort = MemoryConsumer::new("sort")
            .with_can_spill(true)
            .register(&pool);
        agg.free();
        repartition.free();
        assert!(sort.try_grow(376).is_err());
        sort.try_grow(375).unwrap();
        agg.try_grow(375).unwrap();
        assert!(agg.try_grow(1).is_err());
        drop(sort);
        drop(agg);
        assert_eq!(pool.reserved(), 0);
    }
}
