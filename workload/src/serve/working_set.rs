//! The framework's memory: what interpreter or JIT code touches each time it handles a request.
//!
//! Real Express and FastAPI need 3-4x the CPU per request after the loop has idled for 20 ms
//! than back to back (`workload/reference/experiments/idle_wake_cost.py`): their code and data
//! (bytecode, dicts, V8's heap) fall out of the core's caches while the process sleeps, and the
//! first request after the pause pays the misses. A burn of CPU time cannot slow down this way;
//! a walk through memory does. So each request (and each new connection) walks one cycle through
//! a buffer of `LOOPSCALE_WORKING_SET_KIB`, one load per 64-byte line in a random order (object
//! graphs are pointer chases; the prefetcher cannot hide them): back to back it stays in the
//! caches and costs little, after an idle moment it costs what a cold interpreter does, as much
//! as the node's caches lose.

use std::hint::black_box;
use std::ops::Range;

use rand::seq::SliceRandom;

/// One cache line, pointing at the next line of the cycle.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line {
    next: u32,
}

/// Bytes per [`Line`]: the x86-64 and arm64 cache line.
pub const LINE_BYTES: usize = 64;

/// A per-process buffer walked once per framework callback that touches the framework's memory.
pub struct WorkingSet {
    lines: Box<[Line]>,
    /// The cycle's lines in walking order (`cycle[i + 1] == lines[cycle[i]].next`), so that a
    /// callback can walk a part of it from anywhere.
    cycle: Box<[u32]>,
}

impl std::fmt::Debug for WorkingSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkingSet({} lines)", self.lines.len())
    }
}

impl WorkingSet {
    /// A buffer of `kib` KiB whose lines form one cycle in a random order (empty for 0). Built
    /// once per process at start, so the walk is the only cost on the request path.
    pub fn new(kib: usize) -> Self {
        let count = kib * 1024 / LINE_BYTES;
        let mut order: Vec<u32> = (0..count as u32).collect();
        order.shuffle(&mut rand::rng());
        let mut lines = vec![Line { next: 0 }; count].into_boxed_slice();
        for (i, &from) in order.iter().enumerate() {
            lines[from as usize].next = order[(i + 1) % count];
        }
        WorkingSet {
            lines,
            cycle: order.into_boxed_slice(),
        }
    }

    /// The number of lines: the steps of a whole walk.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Whether walking does anything.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Loads every line once, each load waiting for the one before (the next index is in it).
    /// Returns the number of lines visited, which is the buffer's length when the cycle is whole.
    pub fn walk(&self) -> usize {
        self.walk_steps(0..self.len())
    }

    /// The steps of a whole walk split in two, the second part `after_share` of it: the parts
    /// walked before and after Node's answer.
    pub fn split_walk(&self, after_share: f64) -> (Range<usize>, Range<usize>) {
        let split = self.len() - (self.len() as f64 * after_share).round() as usize;
        (0..split, split..self.len())
    }

    /// Loads the lines of the steps `steps` of the whole walk, in its order: a framework's work
    /// split over two callbacks (Node's before and after the answer) touches its memory in two
    /// parts, and the two parts of one request touch each line once, as a whole walk does.
    /// Returns the number of lines visited.
    pub fn walk_steps(&self, steps: Range<usize>) -> usize {
        let steps = steps.start..steps.end.min(self.len());
        let Some(&first) = self.cycle.get(steps.start) else {
            return 0;
        };
        let mut at = first;
        for _ in steps.clone() {
            at = black_box(self.lines[at as usize].next);
        }
        steps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_walk_visits_every_line_once_and_returns_to_the_start() {
        for kib in [1, 4, 64, 1024] {
            let set = WorkingSet::new(kib);
            assert_eq!(set.walk(), kib * 1024 / LINE_BYTES, "{kib} KiB");
            assert_eq!(set.walk(), kib * 1024 / LINE_BYTES, "{kib} KiB, again");
        }
    }

    #[test]
    fn two_parts_walk_the_lines_of_a_whole_walk() {
        let set = WorkingSet::new(64);
        let split = set.len() * 2 / 3;
        assert_eq!(set.walk_steps(0..split), split);
        assert_eq!(set.walk_steps(split..set.len()), set.len() - split);
        // The part after the split starts where the first ends: the cycle's own next pointers.
        let mut at = set.cycle[0];
        for _ in 0..split {
            at = set.lines[at as usize].next;
        }
        assert_eq!(at, set.cycle[split]);
        assert_eq!(
            set.walk_steps(split..usize::MAX),
            set.len() - split,
            "clamped"
        );
        assert_eq!(set.walk_steps(set.len()..set.len() + 5), 0);
    }

    #[test]
    fn a_split_walk_has_its_share_after_and_covers_the_walk() {
        let set = WorkingSet::new(256);
        let (before, after) = set.split_walk(1.0 / 3.0);
        assert_eq!((before.start, before.end, after.end), (0, 2731, 4096));
        assert_eq!(before.end, after.start);
        assert_eq!(set.split_walk(0.0), (0..4096, 4096..4096));
        assert_eq!(WorkingSet::new(0).split_walk(0.5), (0..0, 0..0));
    }

    #[test]
    fn the_order_is_not_the_memory_order() {
        // A walk in address order would be prefetched and never miss: almost no line may point
        // at its neighbour (a random cycle of n lines has about 1 such step on average).
        let set = WorkingSet::new(1024);
        let neighbours = (0..set.lines.len())
            .filter(|&i| set.lines[i].next as usize == i + 1)
            .count();
        assert!(neighbours < 20, "{neighbours} of {} lines", set.lines.len());
    }

    #[test]
    fn an_empty_set_walks_nothing() {
        let set = WorkingSet::new(0);
        assert!(set.is_empty());
        assert_eq!(set.walk(), 0);
    }

    #[test]
    fn lines_are_cache_lines() {
        assert_eq!(std::mem::size_of::<Line>(), LINE_BYTES);
        assert_eq!(std::mem::align_of::<Line>(), LINE_BYTES);
    }
}
