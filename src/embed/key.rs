//! The content-hash key map shared by the in-memory and the persistent embedding caches (its own module, so
//! neither cache depends on the other).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Map keyed by content hash. The keys are already XXH3-128 outputs, so the table hash just folds them to 64 bits
/// instead of running SipHash over them again (which was ~8% of the stage's time). No HashDoS keying: the texts
/// are the user's own source data, and a flood of bucket collisions would need chosen XXH3 preimages anyway.
pub(crate) type KeyMap<V> = HashMap<u128, V, BuildHasherDefault<FoldHasher>>;

#[derive(Default)]
pub(crate) struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write_u128(&mut self, k: u128) {
        self.0 = (k as u64) ^ ((k >> 64) as u64);
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for u128 keys; a correct (if slow) fallback.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}
