//! What a parser holds between transfers (requests awaiting their response,
//! prepared statements), bounded in number and counted in bytes, so that
//! one memory budget covers everything a connection keeps.

use std::collections::{HashMap, VecDeque};

/// The bytes an item keeps on the heap besides its own size.
pub(crate) trait HeapSize {
    fn heap_size(&self) -> usize;
}

impl HeapSize for String {
    fn heap_size(&self) -> usize {
        self.capacity()
    }
}

impl<T: HeapSize> HeapSize for Option<T> {
    fn heap_size(&self) -> usize {
        self.as_ref().map_or(0, HeapSize::heap_size)
    }
}

/// An item's whole cost: its size, what it points to, and the container's
/// overhead per item (a guess, the same for every container).
fn cost<T: HeapSize>(item: &T) -> usize {
    std::mem::size_of::<T>() + item.heap_size() + 16
}

/// A first-in first-out queue of at most `MAX` items that knows its bytes.
/// Each item's cost is taken when it goes in, so taking it out gives back
/// exactly what it added.
pub(crate) struct Queue<T, const MAX: usize> {
    items: VecDeque<(usize, T)>,
    bytes: usize,
}

impl<T, const MAX: usize> Default for Queue<T, MAX> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T: HeapSize, const MAX: usize> Queue<T, MAX> {
    /// Adds `item` at the back; returns true when the oldest was dropped
    /// to make room.
    pub(crate) fn push(&mut self, item: T) -> bool {
        let dropped = self.items.len() >= MAX && self.pop().is_some();
        let c = cost(&item);
        self.bytes += c;
        self.items.push_back((c, item));
        dropped
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        let (c, item) = self.items.pop_front()?;
        self.bytes -= c;
        Some(item)
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.items.front().map(|(_, t)| t)
    }

    /// The oldest item, to change what does not count in its cost.
    pub(crate) fn front_mut(&mut self) -> Option<&mut T> {
        self.items.front_mut().map(|(_, t)| t)
    }

    /// The newest item, to change what does not count in its cost.
    pub(crate) fn back_mut(&mut self) -> Option<&mut T> {
        self.items.back_mut().map(|(_, t)| t)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A map of at most `MAX` entries that knows its bytes; when full, it is
/// emptied before the next insert (prepared statements are re-prepared by
/// clients that need them; what is lost is only their names).
pub(crate) struct Table<K, V, const MAX: usize> {
    entries: HashMap<K, (usize, V)>,
    bytes: usize,
}

impl<K, V, const MAX: usize> Default for Table<K, V, MAX> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V: HeapSize, const MAX: usize> Table<K, V, MAX> {
    pub(crate) fn insert(&mut self, key: K, value: V, key_bytes: usize) {
        if self.entries.len() >= MAX && !self.entries.contains_key(&key) {
            self.entries.clear();
            self.bytes = 0;
        }
        let c = cost(&value) + key_bytes;
        self.bytes += c;
        if let Some((old, _)) = self.entries.insert(key, (c, value)) {
            self.bytes -= old;
        }
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        if let Some((c, _)) = self.entries.remove(key) {
            self.bytes -= c;
        }
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|(_, v)| v)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_back_as_items_go() {
        let mut q = Queue::<String, 2>::default();
        assert!(!q.push("a".repeat(100)));
        assert!(!q.push("b".repeat(10)));
        assert!(q.push(String::new()), "the oldest made room");
        assert_eq!(q.len(), 2);
        let held = q.bytes();
        assert!(held >= 10, "{held}");
        while q.pop().is_some() {}
        assert_eq!(q.bytes(), 0);
        let mut t = Table::<String, String, 2>::default();
        t.insert("s1".to_owned(), "x".repeat(1000), 2);
        t.insert("s1".to_owned(), "y".to_owned(), 2);
        assert!(t.bytes() < 1000, "a replaced value gives its bytes back");
        t.insert("s2".to_owned(), "z".to_owned(), 2);
        t.insert("s3".to_owned(), "w".to_owned(), 2);
        assert!(t.get("s1").is_none(), "full: emptied first");
        t.remove("s3");
        assert_eq!(t.bytes(), 0);
    }
}
