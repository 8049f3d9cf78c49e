//! The `nexus_cache` notification: which keys of a model changed, so that
//! every server drops them from its memory tier. A bulk load announces
//! thousands of keys per batch, and PostgreSQL's notifications cost the
//! server per byte queued (and serialise committing transactions that
//! notify), so keys that are integers written as such go as runs
//! (`[first, last]`) — a batch of consecutive ids is one small notice —
//! and the rest as themselves, in as many notices as the payload limit
//! needs.

use serde::{Deserialize, Serialize};

use super::keys::BatchKeys;

/// Largest payload (PostgreSQL's limit is 8000).
const NOTICE_BYTES: usize = 7000;

/// Runs shorter than this are sent as keys: a run costs two numbers.
const MIN_RUN: i64 = 3;

/// A run longer than any batch (a listener expands runs key by key, so a
/// longer one, which no load sends, flushes the model instead).
pub const MAX_RUN: i64 = 1_000_000;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Notice {
    pub model: String,
    /// `None`: the whole model.
    pub keys: Option<Vec<String>>,
    /// Integer keys `first..=last`, each as its decimal text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<(i64, i64)>,
}

/// What a notice changes, for a listener.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Keys(Vec<String>),
    Model,
}

impl Notice {
    /// The keys the notice names, runs expanded.
    pub fn change(self) -> Change {
        let Some(mut keys) = self.keys else {
            return Change::Model;
        };
        for (first, last) in self.runs {
            if last < first || last.saturating_sub(first) >= MAX_RUN {
                return Change::Model;
            }
            keys.extend((first..=last).map(|k| k.to_string()));
        }
        Change::Keys(keys)
    }
}

/// The key as an integer, if it is one written the one way `i64` writes it
/// (no sign but a minus, no leading zero, no `-0`): checked on the bytes,
/// as this runs for every key of every batch.
fn integer(key: &str) -> Option<i64> {
    let digits = key.strip_prefix('-').unwrap_or(key).as_bytes();
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == key.len(),
        [first, ..] => (b'1'..=b'9').contains(first) && digits.iter().all(u8::is_ascii_digit),
    };
    if canonical { key.parse().ok() } else { None }
}

/// The notifications announcing `keys` (or, `None`, the whole model) as
/// changed.
pub fn notices(model: &str, keys: Option<&BatchKeys>) -> Vec<String> {
    let one = |keys: Option<Vec<String>>, runs: Vec<(i64, i64)>| {
        serde_json::to_string(&Notice {
            model: model.to_string(),
            keys,
            runs,
        })
        .unwrap_or_default()
    };
    let Some(keys) = keys else {
        return vec![one(None, Vec::new())];
    };
    let (mut numbers, mut singles) = match keys {
        BatchKeys::Integers(k) => (k.clone(), Vec::new()),
        BatchKeys::Texts(k) => {
            let mut numbers: Vec<i64> = Vec::with_capacity(k.len());
            let mut singles: Vec<String> = Vec::new();
            for k in k {
                match integer(k) {
                    Some(n) => numbers.push(n),
                    None => singles.push(k.clone()),
                }
            }
            (numbers, singles)
        }
    };
    numbers.sort_unstable();
    numbers.dedup();
    let mut runs = Vec::new();
    for run in numbers.chunk_by(|a, b| a.checked_add(1) == Some(*b)) {
        match (run.first(), run.last()) {
            (Some(&first), Some(&last)) if run.len() as i64 >= MIN_RUN => runs.push((first, last)),
            _ => singles.extend(run.iter().map(i64::to_string)),
        }
    }
    singles.sort_unstable();
    singles.dedup();
    let mut out = Vec::new();
    let (mut chunk, mut chunk_runs, mut size) = (Vec::new(), Vec::new(), 0);
    for run in runs {
        // `[first,last],` at most.
        if size + 42 > NOTICE_BYTES - 200 {
            out.push(one(
                Some(std::mem::take(&mut chunk)),
                std::mem::take(&mut chunk_runs),
            ));
            size = 0;
        }
        size += 42;
        chunk_runs.push(run);
    }
    for k in singles {
        // As written in JSON (escapes and quotes), and a comma.
        let cost = serde_json::to_string(&k).map_or(usize::MAX, |j| j.len()) + 1;
        // A key too long to announce is announced as a model flush.
        if cost + 200 > NOTICE_BYTES {
            return vec![one(None, Vec::new())];
        }
        if size + cost > NOTICE_BYTES - 200 {
            out.push(one(
                Some(std::mem::take(&mut chunk)),
                std::mem::take(&mut chunk_runs),
            ));
            size = 0;
        }
        size += cost;
        chunk.push(k);
    }
    if !chunk.is_empty() || !chunk_runs.is_empty() {
        out.push(one(Some(chunk), chunk_runs));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Everything a listener takes from the notices of `keys`.
    fn announced(keys: &[String]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for n in notices("m", Some(&BatchKeys::Texts(keys.to_vec()))) {
            assert!(n.len() <= 8000, "{} bytes", n.len());
            let notice: Notice = serde_json::from_str(&n).unwrap();
            assert_eq!(notice.model, "m");
            match notice.change() {
                Change::Keys(k) => seen.extend(k),
                Change::Model => panic!("keys announced as a model flush"),
            }
        }
        seen
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            (0i64..300).prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            Just(i64::MAX.to_string()),
            Just(i64::MIN.to_string()),
            "-?0[0-9]{1,3}",
            "[0-9]{19,21}",
            "[ -~]{0,12}",
            "\\PC{0,40}",
            "[\\x00-\\x1f\"\\\\]{1,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// A listener drops exactly the keys announced, whatever they are.
        #[test]
        fn listeners_see_exactly_the_keys(keys in proptest::collection::vec(key(), 0..3000)) {
            let want: BTreeSet<String> = keys.iter().cloned().collect();
            prop_assert_eq!(announced(&keys), want);
        }

        /// A key is taken for an integer exactly when `i64` writes that
        /// integer so (the byte check against the round trip).
        #[test]
        fn integers_are_the_keys_i64_writes(k in prop_oneof![key(), "[-+0-9]{0,22}"]) {
            let round_trip = k.parse::<i64>().ok().filter(|n| n.to_string() == k);
            prop_assert_eq!(integer(&k), round_trip);
        }
    }

    #[test]
    fn a_batch_of_consecutive_ids_is_one_small_notice() {
        let keys: Vec<String> = (5001..=10_000).map(|n: i64| n.to_string()).collect();
        let n = notices("customer", Some(&BatchKeys::Texts(keys)));
        let ids = BatchKeys::Integers((5001..=10_000).collect());
        assert_eq!(notices("customer", Some(&ids)), n);
        assert_eq!(
            n,
            vec![r#"{"model":"customer","keys":[],"runs":[[5001,10000]]}"#]
        );
    }

    #[test]
    fn runs_no_batch_can_hold_flush_the_model() {
        let huge = r#"{"model":"m","keys":[],"runs":[[0,9223372036854775807]]}"#;
        let n: Notice = serde_json::from_str(huge).unwrap();
        assert_eq!(n.change(), Change::Model);
        let backwards: Notice =
            serde_json::from_str(r#"{"model":"m","keys":[],"runs":[[5,1]]}"#).unwrap();
        assert_eq!(backwards.change(), Change::Model);
        let old: Notice = serde_json::from_str(r#"{"model":"m","keys":["a"]}"#).unwrap();
        assert_eq!(old.change(), Change::Keys(vec!["a".into()]));
    }
}
