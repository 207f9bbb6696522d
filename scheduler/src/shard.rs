//! Splitting one collected pytest selection into shards of about equal time.
//!
//! Each test weighs its newest recorded call duration; tests without history
//! weigh the mean of the known ones (1 when none is known, so the split is
//! even by count). Longest first onto the lightest shard (LPT), ties broken by
//! node id, so the same input always gives the same shards.

/// `tests`: (node id, recorded duration). Returns `n` shards (some may be
/// empty when there are fewer tests than shards), each sorted by node id.
pub fn partition(tests: &[(String, Option<f64>)], n: usize) -> Vec<Vec<String>> {
    let n = n.max(1);
    let known: Vec<f64> = tests
        .iter()
        .filter_map(|(_, d)| *d)
        .filter(|d| d.is_finite() && *d >= 0.0)
        .collect();
    let fallback = if known.is_empty() {
        1.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let mut weighted: Vec<(f64, &str)> = tests
        .iter()
        .map(|(id, d)| {
            let w = d.filter(|d| d.is_finite() && *d >= 0.0).unwrap_or(fallback);
            (w.max(1e-6), id.as_str())
        })
        .collect();
    weighted.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let mut shards: Vec<(f64, Vec<String>)> = vec![(0.0, Vec::new()); n];
    for (w, id) in weighted {
        if let Some(lightest) = shards
            .iter_mut()
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.len().cmp(&b.1.len())))
        {
            lightest.0 += w;
            lightest.1.push(id.to_string());
        }
    }
    shards
        .into_iter()
        .map(|(_, mut ids)| {
            ids.sort();
            ids
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, d: Option<f64>) -> (String, Option<f64>) {
        (id.to_string(), d)
    }

    #[test]
    fn without_history_the_split_is_even_by_count() {
        let tests: Vec<_> = (0..7).map(|i| t(&format!("t{i}"), None)).collect();
        let shards = partition(&tests, 2);
        let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 7);
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }

    #[test]
    fn recorded_durations_balance_time_not_count() {
        // One 10 s test against nine 1 s tests: 10 | 9, not 5 | 5 by count.
        let mut tests = vec![t("slow", Some(10.0))];
        tests.extend((0..9).map(|i| t(&format!("quick{i}"), Some(1.0))));
        let shards = partition(&tests, 2);
        let with_slow = shards
            .iter()
            .find(|s| s.contains(&"slow".to_string()))
            .unwrap();
        assert_eq!(with_slow, &vec!["slow".to_string()], "{shards:?}");
    }

    #[test]
    fn every_test_lands_in_exactly_one_shard_deterministically() {
        let tests: Vec<_> = (0..50)
            .map(|i| {
                t(
                    &format!("t{i:02}"),
                    if i % 3 == 0 {
                        None
                    } else {
                        Some(i as f64 / 10.0)
                    },
                )
            })
            .collect();
        let a = partition(&tests, 4);
        assert_eq!(a, partition(&tests, 4), "same input, same shards");
        let mut all: Vec<String> = a.concat();
        all.sort();
        let mut want: Vec<String> = tests.iter().map(|(id, _)| id.clone()).collect();
        want.sort();
        assert_eq!(all, want);
        assert_eq!(
            partition(&tests[..1], 3)
                .iter()
                .filter(|s| !s.is_empty())
                .count(),
            1
        );
    }
}
