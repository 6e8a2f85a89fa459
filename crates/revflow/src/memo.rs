//! What a layer derives from its weights, kept while the weights stay the same.
//!
//! Evaluation and sampling call every layer again and again with unchanged weights; what a layer
//! derives from them (the fused network's transposed weights, an inverse 1×1 convolution) need
//! not be derived again. Entries are found by the weights' values, compared byte for byte, never
//! by address, so weights changed in place are not served stale. Training changes the weights at
//! every step and does not look here.

use std::sync::{Arc, Mutex};

/// A cache of values derived from weights, least recently used out once over its budget.
pub struct Memo<V> {
    entries: Mutex<Vec<Entry<V>>>,
    /// Bytes of keys kept at most (the values are assumed about as large).
    budget: usize,
}

struct Entry<V> {
    key: Vec<Vec<u8>>,
    value: Arc<V>,
}

impl<V> Memo<V> {
    /// An empty cache keeping up to `budget` bytes of keys.
    pub const fn new(budget: usize) -> Self {
        Memo {
            entries: Mutex::new(Vec::new()),
            budget,
        }
    }

    /// The value derived from `key` (the weights, as slices), made by `make` unless a value for
    /// the same bytes is kept.
    pub fn get(&self, key: &[&[f32]], make: impl FnOnce() -> V) -> Arc<V> {
        let bytes = |k: &[f32]| -> Vec<u8> { bytemuck::cast_slice(k).to_vec() };
        let same = |e: &Entry<V>| {
            e.key.len() == key.len()
                && e.key
                    .iter()
                    .zip(key)
                    .all(|(a, b)| a[..] == *bytemuck::cast_slice::<f32, u8>(b))
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = entries.iter().position(same) {
            let entry = entries.remove(i);
            let value = entry.value.clone();
            entries.insert(0, entry);
            return value;
        }
        drop(entries);
        let value = Arc::new(make());
        let entry = Entry {
            key: key.iter().map(|k| bytes(k)).collect(),
            value: value.clone(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(0, entry);
        let mut total = 0;
        entries.retain(|e| {
            total += e.key.iter().map(Vec::len).sum::<usize>();
            total <= self.budget
        });
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_content_and_the_least_recent_leave_first() {
        let memo = Memo::new(3 * 4 * 4); // three keys of four values
        let made = std::cell::Cell::new(0);
        let get = |key: &[f32]| {
            *memo.get(&[key], || {
                made.set(made.get() + 1);
                key.iter().sum::<f32>()
            })
        };
        let mut w = vec![1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(get(&w), 10.0);
        assert_eq!(get(&w.clone()), 10.0, "the same values in other memory");
        w[2] = 5.0; // changed in place
        assert_eq!(get(&w), 12.0);
        assert_eq!(get(&[-0.0, 0.0, 0.0, 0.0]), 0.0);
        assert_eq!(
            get(&[0.0, 0.0, 0.0, 0.0]),
            0.0,
            "−0 and 0 differ in their bytes"
        );
        assert_eq!(made.get(), 4);
        // Four keys were made with room for three: the first, least recently used, is gone.
        assert_eq!(get(&[1.0, 2.0, 3.0, 4.0]), 10.0);
        assert_eq!(made.get(), 5);
        assert_eq!(get(&w), 12.0);
        assert_eq!(
            made.get(),
            6,
            "this one had become the least recent and left too"
        );
    }
}
