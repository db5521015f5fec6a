//! The in-memory LRU, bounded by payload bytes: a map plus a recency index.

use super::{BlobMeta, CacheKey};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Least recently used entries by total payload bytes: a map and a recency index.
pub(super) struct Lru {
    pub(super) map: HashMap<CacheKey, Entry>,
    /// Recency tick → key; the first entry is the least recently used.
    order: BTreeMap<u64, CacheKey>,
    tick: u64,
    pub(super) bytes: u64,
    pub(super) budget: u64,
}

pub(super) struct Entry {
    bytes: Arc<[u8]>,
    meta: BlobMeta,
    tick: u64,
}

impl Lru {
    pub(super) fn new(budget: u64) -> Lru {
        Lru {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            budget,
        }
    }

    /// The entry's bytes, marking it most recently used; an entry for another `meta` is dropped.
    pub(super) fn get(&mut self, key: &CacheKey, meta: &BlobMeta) -> Option<Arc<[u8]>> {
        let entry = self.map.get_mut(key)?;
        if entry.meta != *meta {
            self.remove(key);
            return None;
        }
        self.tick += 1;
        self.order.remove(&entry.tick);
        entry.tick = self.tick;
        self.order.insert(self.tick, *key);
        Some(entry.bytes.clone())
    }

    /// Inserts (replacing any entry for `key`) and evicts until within budget; returns the
    /// number evicted. A payload larger than the budget is not kept.
    pub(super) fn insert(&mut self, key: CacheKey, meta: &BlobMeta, bytes: Arc<[u8]>) -> u64 {
        self.remove(&key);
        let len = bytes.len() as u64;
        if len > self.budget {
            return 0;
        }
        let mut evicted = 0;
        while self.bytes + len > self.budget {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&old) {
                self.bytes -= e.bytes.len() as u64;
            }
            evicted += 1;
        }
        self.tick += 1;
        self.order.insert(self.tick, key);
        self.bytes += len;
        let meta = meta.clone();
        let tick = self.tick;
        self.map.insert(key, Entry { bytes, meta, tick });
        evicted
    }

    fn remove(&mut self, key: &CacheKey) {
        if let Some(e) = self.map.remove(key) {
            self.order.remove(&e.tick);
            self.bytes -= e.bytes.len() as u64;
        }
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> CacheKey {
        CacheKey::builder().part("n", n).finish()
    }

    #[test]
    fn lru_evicts_least_recently_used_by_bytes() {
        let meta = BlobMeta::new("cpu", "");
        let mut lru = Lru::new(100);
        assert_eq!(lru.insert(k("a"), &meta, vec![0; 40].into()), 0);
        assert_eq!(lru.insert(k("b"), &meta, vec![0; 40].into()), 0);
        assert!(lru.get(&k("a"), &meta).is_some());
        assert_eq!(lru.insert(k("c"), &meta, vec![0; 40].into()), 1);
        assert!(lru.get(&k("b"), &meta).is_none());
        assert!(lru.get(&k("a"), &meta).is_some());
        assert_eq!(lru.bytes, 80);
        assert_eq!(lru.insert(k("big"), &meta, vec![0; 101].into()), 0);
        assert!(lru.get(&k("big"), &meta).is_none());
        assert_eq!(lru.insert(k("a"), &meta, vec![0; 10].into()), 0);
        assert_eq!(lru.bytes, 50);
        assert!(lru.get(&k("a"), &BlobMeta::new("wgpu", "")).is_none());
        assert_eq!((lru.bytes, lru.map.len(), lru.order.len()), (40, 1, 1));
    }
}
