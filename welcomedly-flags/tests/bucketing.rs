//! Rollout bucketing: frozen golden vectors per algorithm version, distribution over 100 000
//! keys, and monotonicity (raising a percentage never removes a user who was in).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use welcomedly_flags::bucketing::{BucketingVersion, TOTAL, bucket};
use welcomedly_flags::{Context, Snapshot};

/// Frozen. A change to an algorithm that breaks one of these moves real users between variants:
/// add a new [`BucketingVersion`] instead.
const GOLDEN: &[(BucketingVersion, &str, &str, u32)] = {
    use BucketingVersion::{Flagd, V1};
    &[
        (V1, "new-ui", "user-1", 72450),
        (V1, "new-ui", "user-2", 9083),
        (V1, "new-ui", "", 48475),
        (V1, "", "user-1", 65562),
        (
            V1,
            "checkout-v2",
            "7f2c1a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b",
            51705,
        ),
        (V1, "a", "b", 69342),
        (V1, "ab", "c", 17222),
        (V1, "salt-with-ünïcödé", "ключ", 86391),
        (V1, "long-salt-exactly-24-byt", "k", 3257),
        (V1, "x", "12345678", 45027),
        (V1, "x", "123456789", 12769),
        (V1, "flag", "42", 18827),
        (Flagd, "new-ui", "user-1", 54482),
        (Flagd, "new-ui", "user-2", 95495),
        (Flagd, "new-ui", "", 92963),
        (Flagd, "", "user-1", 97122),
        (
            Flagd,
            "checkout-v2",
            "7f2c1a9e-3b4d-4e5f-8a6b-9c0d1e2f3a4b",
            53992,
        ),
        (Flagd, "a", "b", 60839),
        (Flagd, "ab", "c", 70259),
        (Flagd, "salt-with-ünïcödé", "ключ", 3783),
        (Flagd, "long-salt-exactly-24-byt", "k", 77202),
        (Flagd, "x", "12345678", 46461),
        (Flagd, "x", "123456789", 59524),
        (Flagd, "flag", "42", 13998),
    ]
};

#[test]
fn golden_vectors() {
    for &(version, salt, key, want) in GOLDEN {
        assert_eq!(
            bucket(version, salt, key),
            want,
            "{version:?} {salt:?} {key:?}"
        );
    }
}

#[test]
fn flagd_bucket_is_murmur3_of_key_and_value_scaled() {
    use welcomedly_flags::bucketing::murmur3_x86_32;
    for &(version, salt, key, want) in GOLDEN {
        if version == BucketingVersion::Flagd {
            let hash = murmur3_x86_32(format!("{salt}{key}").as_bytes(), 0);
            assert_eq!(((u64::from(hash) * u64::from(TOTAL)) >> 32) as u32, want);
        }
    }
}

fn rollout(version: &str, salt: &str, weights: &[(&str, u32)]) -> Snapshot {
    let variants: Vec<String> = weights
        .iter()
        .map(|(v, w)| format!(r#"{{ "variant": "{v}", "weight": {w} }}"#))
        .collect();
    Snapshot::compile_json(
        &format!(
            r#"{{ "flags": {{ "f": {{ "bucketing": "{version}", "salt": "{salt}",
            "variants": {{ "a": "a", "b": "b", "c": "c" }},
            "fallthrough": {{ "rollout": {{ "variants": [{}] }} }} }} }} }}"#,
            variants.join(",")
        ),
        1,
    )
    .unwrap()
}

#[test]
fn distribution_is_within_one_percent_over_100k_keys() {
    for version in ["v1", "flagd"] {
        let weights = [("a", 10_000), ("b", 30_000), ("c", 60_000)];
        let s = rollout(version, "distribution", &weights);
        let mut counts = [0u32; 3];
        let mut key = String::new();
        for i in 0..100_000 {
            key.clear();
            key.push_str("user-");
            key.push_str(&i.to_string());
            match s.string_value("f", &Context::new(&key), "-").value {
                "a" => counts[0] += 1,
                "b" => counts[1] += 1,
                "c" => counts[2] += 1,
                other => panic!("{other}"),
            }
        }
        for ((_, weight), count) in weights.iter().zip(counts) {
            // Weights and counts are both out of 100 000: 1 % is 1 000.
            let off = i64::from(count) - i64::from(*weight);
            assert!(off.abs() <= 1_000, "{version}: {counts:?} vs {weights:?}");
        }
    }
}

#[test]
fn the_finest_weight_is_a_thousandth_of_a_percent() {
    let s = rollout("v1", "fine", &[("a", 1), ("b", 99_999)]);
    let inside = (0..1_000_000)
        .filter(|i| {
            s.string_value("f", &Context::new(&format!("k{i}")), "-")
                .value
                == "a"
        })
        .count();
    // 10 expected out of a million; Poisson, so 0 or 40 would mean the weight is not honoured.
    assert!((1..=30).contains(&inside), "{inside}");
}

fn served(s: &Snapshot, key: &str) -> String {
    s.string_value("f", &Context::new(key), "-")
        .value
        .to_owned()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Raising variant a's share (taking it from b) never moves anyone out of a, whichever side
    /// of the list a is on and whichever algorithm.
    #[test]
    fn raising_a_percentage_never_removes_a_user(
        salt in "[a-z0-9-]{0,12}",
        keys in proptest::collection::vec("[A-Za-z0-9@._-]{0,40}", 1..40),
        low in 0u32..=TOTAL,
        raise in 0u32..=TOTAL,
        a_first in any::<bool>(),
        flagd in any::<bool>(),
    ) {
        let high = low.saturating_add(raise).min(TOTAL);
        let version = if flagd { "flagd" } else { "v1" };
        let weights = |w: u32| if a_first { vec![("a", w), ("b", TOTAL - w)] } else { vec![("b", TOTAL - w), ("a", w)] };
        let before = rollout(version, &salt, &weights(low));
        let after = rollout(version, &salt, &weights(high));
        for key in &keys {
            if served(&before, key) == "a" {
                prop_assert_eq!(served(&after, key), "a");
            }
        }
    }

    /// With three variants, moving weight between neighbours moves only users of those two.
    #[test]
    fn moving_weight_between_neighbours_leaves_the_third_alone(
        keys in proptest::collection::vec("[a-z0-9]{1,20}", 1..40),
        wa in 0u32..=50_000,
        wb in 0u32..=50_000,
        shift in 0u32..=50_000,
    ) {
        let shift = shift.min(wb);
        let before = rollout("v1", "three", &[("a", wa), ("b", wb), ("c", TOTAL - wa - wb)]);
        let after = rollout("v1", "three", &[("a", wa + shift), ("b", wb - shift), ("c", TOTAL - wa - wb)]);
        for key in &keys {
            let (x, y) = (served(&before, key), served(&after, key));
            if x == "a" || x == "c" {
                prop_assert_eq!(x, y);
            }
        }
    }

    #[test]
    fn buckets_are_in_range(salt in ".{0,30}", key in ".{0,60}") {
        prop_assert!(bucket(BucketingVersion::V1, &salt, &key) < TOTAL);
        prop_assert!(bucket(BucketingVersion::Flagd, &salt, &key) < TOTAL);
    }
}
