//! Pending-job order: priority first, FIFO within a priority, and aging so that
//! a low-priority job cannot starve.
//!
//! Aging raises a job's effective priority by one for every `aging` interval it
//! waits: `effective(t) = priority + (t - submitted) / aging`. Comparing two
//! jobs at the same time `t`, the `t` cancels out, so the order is fixed at
//! submit time by `rank = priority * aging - submitted` (higher runs first) and
//! a plain ordered set serves it.
//!
//! Beside the one order the queue keeps indexes, so that nothing on the core
//! thread walks every pending job: per **requirement class** (jobs whose
//! matching-relevant spec is the same, `matching::class_key`, share one fit
//! verdict per agent; dispatch merges the classes' heads in the one order and
//! passes over a whole class at once), per queue (count, oldest submit), and by
//! expiry deadline (jobs never started).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A job's place in the pending order (smaller runs first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Place {
    rank: Reverse<i128>,
    job: u64,
}

impl Place {
    pub fn job(&self) -> u64 {
        self.job
    }
}

/// A requirement class, interned: an index into the queue's classes.
pub type Class = u32;

/// What the queue needs to know of a job it takes.
pub struct Entry<'a> {
    pub queue: &'a str,
    pub priority: i32,
    pub submitted_ms: i64,
    /// The wait that is worth one priority step.
    pub aging_ms: u64,
    /// The job's requirement class (`matching::class_key`).
    pub class: Vec<u8>,
    /// When the job expires if it has not started by then (`None`: it started once).
    pub deadline_ms: Option<i64>,
}

struct Slot {
    place: Place,
    queue: String,
    class: Class,
    submitted_ms: i64,
    deadline_ms: Option<i64>,
}

/// One requirement class: its key and its jobs in pending order.
struct ClassJobs {
    key: Vec<u8>,
    order: BTreeSet<Place>,
}

/// All pending jobs of all queues, in dispatch order.
#[derive(Default)]
pub struct PendingQueue {
    order: BTreeSet<Place>,
    slots: HashMap<u64, Slot>,
    /// queue -> its jobs by submit time (count and oldest).
    per_queue: BTreeMap<String, BTreeSet<(i64, u64)>>,
    classes: HashMap<Class, ClassJobs>,
    class_ids: HashMap<Vec<u8>, Class>,
    next_class: Class,
    /// (deadline, job) of the jobs that never started.
    deadlines: BTreeSet<(i64, u64)>,
}

impl PendingQueue {
    /// Adds `job` (again: its old place is dropped first).
    pub fn push(&mut self, job: u64, e: Entry<'_>) {
        self.remove(job);
        let rank =
            i128::from(e.priority) * i128::from(e.aging_ms.max(1)) - i128::from(e.submitted_ms);
        let place = Place {
            rank: Reverse(rank),
            job,
        };
        let class = match self.class_ids.get(&e.class) {
            Some(&c) => c,
            None => {
                let c = self.next_class;
                self.next_class = self.next_class.wrapping_add(1);
                self.class_ids.insert(e.class.clone(), c);
                self.classes.insert(
                    c,
                    ClassJobs {
                        key: e.class,
                        order: BTreeSet::new(),
                    },
                );
                c
            }
        };
        if let Some(c) = self.classes.get_mut(&class) {
            c.order.insert(place);
        }
        self.order.insert(place);
        self.per_queue
            .entry(e.queue.to_string())
            .or_default()
            .insert((e.submitted_ms, job));
        if let Some(d) = e.deadline_ms {
            self.deadlines.insert((d, job));
        }
        self.slots.insert(
            job,
            Slot {
                place,
                queue: e.queue.to_string(),
                class,
                submitted_ms: e.submitted_ms,
                deadline_ms: e.deadline_ms,
            },
        );
    }

    /// Removes `job`; returns whether it was pending.
    pub fn remove(&mut self, job: u64) -> bool {
        let Some(slot) = self.slots.remove(&job) else {
            return false;
        };
        self.order.remove(&slot.place);
        if let Some(q) = self.per_queue.get_mut(&slot.queue) {
            q.remove(&(slot.submitted_ms, job));
            if q.is_empty() {
                self.per_queue.remove(&slot.queue);
            }
        }
        if let Some(d) = slot.deadline_ms {
            self.deadlines.remove(&(d, job));
        }
        if let Some(c) = self.classes.get_mut(&slot.class) {
            c.order.remove(&slot.place);
            if c.order.is_empty() {
                let key = std::mem::take(&mut c.key);
                self.classes.remove(&slot.class);
                self.class_ids.remove(&key);
            }
        }
        true
    }

    /// Pending job ids, first to run first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.iter().map(|s| s.job)
    }

    pub fn contains(&self, job: u64) -> bool {
        self.slots.contains_key(&job)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many jobs of `queue` are pending.
    pub fn pending_in(&self, queue: &str) -> u64 {
        self.per_queue.get(queue).map_or(0, |q| q.len() as u64)
    }

    /// When the longest-waiting pending job of `queue` was submitted.
    pub fn oldest_in(&self, queue: &str) -> Option<i64> {
        self.per_queue
            .get(queue)
            .and_then(|q| q.first())
            .map(|&(at, _)| at)
    }

    /// Never-started jobs whose deadline is `now` or earlier, earliest first.
    pub fn due(&self, now: i64) -> Vec<u64> {
        self.deadlines
            .range(..=(now, u64::MAX))
            .map(|&(_, job)| job)
            .collect()
    }

    /// Every class with its first job, in no particular order.
    pub fn class_heads(&self) -> Vec<(Class, Place)> {
        self.classes
            .iter()
            .filter_map(|(&c, jobs)| Some((c, *jobs.order.first()?)))
            .collect()
    }

    /// The job of `class` that follows `after` in the pending order.
    pub fn next_in_class(&self, class: Class, after: Place) -> Option<Place> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.classes
            .get(&class)?
            .order
            .range((Excluded(after), Unbounded))
            .next()
            .copied()
    }

    /// How many requirement classes have pending jobs.
    pub fn class_count(&self) -> usize {
        self.classes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn entry(queue: &str, priority: i32, submitted_ms: i64) -> Entry<'_> {
        Entry {
            queue,
            priority,
            submitted_ms,
            aging_ms: MIN,
            class: b"any".to_vec(),
            deadline_ms: Some(submitted_ms + 1_000),
        }
    }

    #[test]
    fn higher_priority_first_then_fifo() {
        let mut q = PendingQueue::default();
        q.push(1, entry("default", 0, 1_000));
        q.push(2, entry("default", 5, 2_000));
        q.push(3, entry("default", 0, 3_000));
        q.push(4, entry("nightly", 5, 4_000));
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![2, 4, 1, 3]);
        assert_eq!(q.pending_in("default"), 3);
        assert!(q.remove(2));
        assert!(!q.remove(2));
        assert_eq!(q.pending_in("default"), 2);
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![4, 1, 3]);
    }

    #[test]
    fn a_low_priority_job_overtakes_newer_high_priority_work_once_it_has_aged() {
        let mut q = PendingQueue::default();
        // priority 0 submitted at t=0; one step per minute.
        q.push(1, entry("default", 0, 0));
        // 2 priority steps higher, submitted 1 min later: still ahead.
        q.push(2, entry("default", 2, MIN as i64));
        // 2 steps higher but submitted 3 min later: the old job has aged past it.
        q.push(3, entry("default", 2, 3 * MIN as i64));
        assert_eq!(q.iter().collect::<Vec<_>>(), vec![2, 1, 3]);
    }

    #[test]
    fn the_indexes_follow_pushes_and_removes() {
        let mut q = PendingQueue::default();
        let mut gpu = entry("default", 0, 2_000);
        gpu.class = b"gpu".to_vec();
        q.push(1, entry("default", 0, 1_000));
        q.push(2, gpu);
        q.push(3, entry("nightly", 9, 3_000));
        assert_eq!(q.class_count(), 2);
        assert_eq!(q.oldest_in("default"), Some(1_000));
        assert_eq!(q.due(3_000), vec![1, 2]);
        let mut heads: Vec<u64> = q.class_heads().iter().map(|(_, p)| p.job()).collect();
        heads.sort();
        assert_eq!(heads, vec![2, 3], "the head of each class");
        let any = q
            .class_heads()
            .into_iter()
            .find(|(_, p)| p.job() == 3)
            .unwrap();
        assert_eq!(q.next_in_class(any.0, any.1).map(|p| p.job()), Some(1));
        q.remove(2);
        assert_eq!(q.class_count(), 1, "an empty class is dropped");
        q.remove(1);
        assert_eq!(q.oldest_in("default"), None);
        assert_eq!(q.pending_in("default"), 0);
        assert_eq!(q.due(i64::MAX), vec![3]);
    }
}
