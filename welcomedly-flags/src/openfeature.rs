//! An OpenFeature provider over [`Flags`] (feature `openfeature`): the `open-feature` crate's
//! (0.3) [`FeatureProvider`], so code written against the OpenFeature Rust SDK evaluates this
//! crate's flags in process, with no network hop.
//!
//! - **Typed resolution** of the five types: `bool`, `i64` (a flag with a fractional variant is
//!   `TYPE_MISMATCH`), `f64` (integer variants convert), `String`, and structs (object
//!   variants; an array variant is `TYPE_MISMATCH`, JSON `null`s inside are left out, as
//!   OpenFeature's values have no null).
//! - **Variant, reason** (`STATIC`, `TARGETING_MATCH`, `SPLIT`, `DEFAULT`), **flag metadata**
//!   (`flagSetVersion`, the snapshot's version, and the flag's `description` when set) and
//!   **error codes** (`FLAG_NOT_FOUND`, `TYPE_MISMATCH`, `PARSE_ERROR`, `GENERAL`).
//! - **The caller's default**: the SDK 0.3's provider API has no way to say "serve the caller's
//!   default" without an error (OFREP calls it a *code default* result), so a disabled flag and
//!   a flag that serves no variant for the context resolve to an error whose code is
//!   `General("DISABLED")` or `General("DEFAULT")` (the OpenFeature reason), and the caller's
//!   default applies, as it does for every error.
//! - **Context**: the targeting key and the string, boolean, integer and float fields; a
//!   date-time field becomes unix milliseconds (the native model compares dates given either
//!   way); struct fields (opaque `Any` in the SDK) are left out.
//! - **Status** follows the store when built [`with_sync`](FlagsProvider::with_sync): `Ready`;
//!   `STALE` while the store is unreachable, or its latest document was refused, or it lost
//!   its data (the last good snapshot keeps serving); `Error` when no flag set was ever
//!   applied and the store has a problem. Without a sync it is always `Ready`.
//! - **Events**: the Rust SDK 0.3 has no provider events (`PROVIDER_CONFIGURATION_CHANGED`,
//!   `PROVIDER_STALE`, …); [`FlagsProvider::changes`] and [`FlagsProvider::watch`] give this
//!   crate's change subscriptions instead, which fire when a flag's effective definition
//!   changes (through a prerequisite or a segment too).
//!
//! ```
//! use open_feature::provider::FeatureProvider;
//! use open_feature::{EvaluationContext, EvaluationErrorCode, EvaluationReason};
//! use welcomedly_flags::openfeature::FlagsProvider;
//! use welcomedly_flags::{Flags, Snapshot};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let flags = Flags::new(Snapshot::compile_json(r#"{ "flags": {
//!   "checkout": { "description": "one-page checkout",
//!                 "variants": { "classic": "classic", "one-page": "one-page" },
//!                 "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }],
//!                             "serve": { "variant": "one-page" } }],
//!                 "fallthrough": { "variant": "classic" } }
//! } }"#, 3)?);
//! let provider = FlagsProvider::new(flags);
//!
//! let pro = EvaluationContext::default().with_targeting_key("u1").with_custom_field("plan", "pro");
//! let details = provider.resolve_string_value("checkout", &pro).await.map_err(|e| format!("{e:?}"))?;
//! assert_eq!(details.value, "one-page");
//! assert_eq!(details.variant.as_deref(), Some("one-page"));
//! assert_eq!(details.reason, Some(EvaluationReason::TargetingMatch));
//!
//! let error = provider.resolve_bool_value("checkout", &pro).await.unwrap_err();
//! assert_eq!(error.code, EvaluationErrorCode::TypeMismatch);
//!
//! // Through the SDK's global API and a client:
//! let mut api = open_feature::OpenFeature::singleton_mut().await;
//! api.set_provider(provider).await;
//! let client = api.create_client();
//! let value = client
//!     .get_string_value("checkout", Some(&pro), None)
//!     .await
//!     .map_err(|e| format!("{e:?}"))?;
//! assert_eq!(value, "one-page");
//! # Ok(())
//! # }
//! ```

use std::fmt;

use open_feature::provider::{
    FeatureProvider, ProviderMetadata, ProviderStatus, ResolutionDetails,
};
use open_feature::{
    EvaluationContext, EvaluationContextFieldValue, EvaluationError, EvaluationErrorCode,
    EvaluationReason, EvaluationResult, FlagMetadata, StructValue, Value, async_trait,
};
use tokio::sync::broadcast;

use crate::store::SyncHealth;
use crate::{Context, ErrorCode, Evaluation, FlagChange, FlagWatch, Flags, Reason, Snapshot};

/// The provider name reported in [`ProviderMetadata`].
pub const PROVIDER_NAME: &str = "welcomedly-flags";

/// An OpenFeature provider evaluating against a [`Flags`] handle's current snapshot.
pub struct FlagsProvider {
    flags: Flags,
    metadata: ProviderMetadata,
    sync: Option<SyncHealth>,
}

impl fmt::Debug for FlagsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlagsProvider")
            .field("flags", &self.flags)
            .field("sync", &self.sync)
            .finish()
    }
}

impl FlagsProvider {
    /// A provider over `flags`, always `Ready`.
    pub fn new(flags: Flags) -> Self {
        Self {
            flags,
            metadata: ProviderMetadata::new(PROVIDER_NAME),
            sync: None,
        }
    }

    /// Reports the status of the [`FlagSync`](crate::store::FlagSync) that feeds `flags`
    /// (`FlagSyncHandle::health()`).
    #[must_use]
    pub fn with_sync(mut self, sync: SyncHealth) -> Self {
        self.sync = Some(sync);
        self
    }

    /// The flags evaluated.
    pub fn flags(&self) -> &Flags {
        &self.flags
    }

    /// Every flag change from now on (the Rust SDK has no provider events; this is ours).
    pub fn changes(&self) -> broadcast::Receiver<FlagChange> {
        self.flags.subscribe()
    }

    /// Changes of flag `key` from now on.
    pub fn watch(&self, key: &str) -> FlagWatch {
        self.flags.watch(key)
    }

    fn resolve<'s, T, U>(
        &self,
        snapshot: &'s Snapshot,
        key: &str,
        eval: Evaluation<'s, T>,
        convert: impl FnOnce(T) -> Result<U, EvaluationError>,
    ) -> EvaluationResult<ResolutionDetails<U>> {
        if let Some(code) = eval.error {
            return Err(error(key, code));
        }
        let Some(variant) = eval.variant else {
            let reason = eval.reason.as_str();
            return Err(EvaluationError {
                code: EvaluationErrorCode::General(reason.to_owned()),
                message: Some(format!(
                    "flag {key:?} serves no variant for this context (reason {reason}): use your default"
                )),
            });
        };
        let mut metadata =
            FlagMetadata::default().with_value("flagSetVersion", version(snapshot.version()));
        if let Some(description) = snapshot
            .flag_set()
            .flags
            .get(key)
            .and_then(|f| f.description.as_deref())
        {
            metadata.add_value("description", description);
        }
        // A flagd flag's metadata: OpenFeature's metadata values are scalars, so nested ones
        // are left out.
        for (name, value) in snapshot.metadata(key).into_iter().flatten() {
            match value {
                serde_json::Value::Bool(b) => metadata.add_value(name, *b),
                serde_json::Value::String(s) => metadata.add_value(name, s.as_str()),
                serde_json::Value::Number(n) => match n.as_i64() {
                    Some(i) => metadata.add_value(name, i),
                    None => metadata.add_value(name, n.as_f64().unwrap_or_default()),
                },
                _ => {}
            }
        }
        Ok(ResolutionDetails {
            value: convert(eval.value)?,
            variant: Some(variant.to_owned()),
            reason: Some(reason(eval.reason)),
            flag_metadata: Some(metadata),
        })
    }
}

/// The snapshot version as OpenFeature's metadata integer (versions beyond `i64` saturate).
fn version(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn reason(reason: Reason<'_>) -> EvaluationReason {
    match reason {
        Reason::Static => EvaluationReason::Static,
        Reason::TargetingMatch(_) => EvaluationReason::TargetingMatch,
        Reason::Split(_) => EvaluationReason::Split,
        Reason::Disabled => EvaluationReason::Disabled,
        Reason::Error => EvaluationReason::Error,
        _ => EvaluationReason::Default,
    }
}

fn error(key: &str, code: ErrorCode) -> EvaluationError {
    let (code, message) = match code {
        ErrorCode::FlagNotFound => (
            EvaluationErrorCode::FlagNotFound,
            format!("there is no flag {key:?}"),
        ),
        ErrorCode::TypeMismatch => (
            EvaluationErrorCode::TypeMismatch,
            format!("flag {key:?} has variants of another type: ask for its type"),
        ),
        ErrorCode::ParseError => (
            EvaluationErrorCode::ParseError,
            format!("flag {key:?} could not be parsed: fix its definition"),
        ),
        _ => (
            EvaluationErrorCode::General(String::from("GENERAL")),
            format!("flag {key:?} failed to evaluate: check its definition"),
        ),
    };
    EvaluationError {
        code,
        message: Some(message),
    }
}

/// The native context for an OpenFeature one, borrowing its strings.
fn context(ec: &EvaluationContext) -> Context<'_> {
    let mut ctx = match &ec.targeting_key {
        Some(key) => Context::new(key),
        None => Context::anonymous(),
    };
    for (name, value) in &ec.custom_fields {
        match value {
            EvaluationContextFieldValue::String(s) => ctx.set(name, s.as_str()),
            EvaluationContextFieldValue::Bool(b) => ctx.set(name, *b),
            EvaluationContextFieldValue::Int(i) => ctx.set(name, *i),
            EvaluationContextFieldValue::Float(f) => ctx.set(name, *f),
            EvaluationContextFieldValue::DateTime(t) => {
                let millis = t.unix_timestamp_nanos() / 1_000_000;
                if let Ok(millis) = i64::try_from(millis) {
                    ctx.set(name, millis);
                }
            }
            EvaluationContextFieldValue::Struct(_) => {}
        }
    }
    ctx
}

/// An OpenFeature value for a JSON value; `None` for `null`.
fn value(json: &serde_json::Value) -> Option<Value> {
    Some(match json {
        serde_json::Value::Null => return None,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64()?),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().filter_map(value).collect()),
        serde_json::Value::Object(map) => Value::Struct(structure(map)),
    })
}

fn structure(map: &serde_json::Map<String, serde_json::Value>) -> StructValue {
    StructValue {
        fields: map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), value(v)?)))
            .collect(),
    }
}

#[async_trait]
impl FeatureProvider for FlagsProvider {
    fn status(&self) -> ProviderStatus {
        let Some(sync) = &self.sync else {
            return ProviderStatus::Ready;
        };
        let problem = sync.is_stale() || sync.last_error().is_some();
        match (problem, sync.applied_version()) {
            (false, _) => ProviderStatus::Ready,
            (true, 0) => ProviderStatus::Error,
            (true, _) => ProviderStatus::STALE,
        }
    }

    fn metadata(&self) -> &ProviderMetadata {
        &self.metadata
    }

    async fn resolve_bool_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<bool>> {
        let snapshot = self.flags.load();
        let ctx = context(evaluation_context);
        let eval = snapshot.bool_value(flag_key, &ctx, false);
        self.resolve(&snapshot, flag_key, eval, Ok)
    }

    async fn resolve_int_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<i64>> {
        let snapshot = self.flags.load();
        let ctx = context(evaluation_context);
        let eval = snapshot.int_value(flag_key, &ctx, 0);
        self.resolve(&snapshot, flag_key, eval, Ok)
    }

    async fn resolve_float_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<f64>> {
        let snapshot = self.flags.load();
        let ctx = context(evaluation_context);
        let eval = snapshot.float_value(flag_key, &ctx, 0.0);
        self.resolve(&snapshot, flag_key, eval, Ok)
    }

    async fn resolve_string_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<String>> {
        let snapshot = self.flags.load();
        let ctx = context(evaluation_context);
        let eval = snapshot.string_value(flag_key, &ctx, "");
        self.resolve(&snapshot, flag_key, eval, |s| Ok(s.to_owned()))
    }

    async fn resolve_struct_value(
        &self,
        flag_key: &str,
        evaluation_context: &EvaluationContext,
    ) -> EvaluationResult<ResolutionDetails<StructValue>> {
        let snapshot = self.flags.load();
        let ctx = context(evaluation_context);
        let eval = snapshot.object_value(flag_key, &ctx, &serde_json::Value::Null);
        self.resolve(&snapshot, flag_key, eval, |v| match v {
            serde_json::Value::Object(map) => Ok(structure(map)),
            _ => Err(EvaluationError {
                code: EvaluationErrorCode::TypeMismatch,
                message: Some(format!(
                    "flag {flag_key:?} serves an array, not a structure: use an object variant"
                )),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::{Change, FlagStore, MemoryStore, SyncConfig, sync_flags};

    const FLAGS: &str = r#"{ "flags": {
      "on": { "description": "always on", "variants": { "on": true, "off": false }, "fallthrough": { "variant": "on" } },
      "mb": { "variants": { "s": 1, "l": 100 },
              "rules": [{ "clauses": [{ "attribute": "plan", "op": "equals", "values": ["pro"] }], "serve": { "variant": "l" } }],
              "fallthrough": { "variant": "s" } },
      "ratio": { "variants": { "a": 0.5, "b": 2 }, "fallthrough": { "variant": "a" } },
      "name": { "variants": { "x": "" }, "targets": [{ "variant": "x", "values": ["u1"] }] },
      "cfg": { "variants": { "v": { "n": 1, "s": "t", "nested": { "ok": true }, "gone": null, "list": [1, 2.5] } }, "fallthrough": { "variant": "v" } },
      "list": { "variants": { "v": [1, 2] }, "fallthrough": { "variant": "v" } },
      "killed": { "enabled": false, "variants": { "on": true }, "fallthrough": { "variant": "on" } },
      "since": { "variants": { "new": true, "old": false },
                 "rules": [{ "clauses": [{ "attribute": "signup", "op": "after", "values": ["2026-01-01T00:00:00Z"] }], "serve": { "variant": "new" } }],
                 "fallthrough": { "variant": "old" } }
    } }"#;

    fn provider() -> FlagsProvider {
        FlagsProvider::new(Flags::new(Snapshot::compile_json(FLAGS, 9).unwrap()))
    }

    fn user(key: &str) -> EvaluationContext {
        EvaluationContext::default().with_targeting_key(key)
    }

    #[cfg(feature = "flagd")]
    #[tokio::test]
    async fn a_flagd_snapshot_resolves_with_its_metadata() {
        let file = r#"{ "flags": { "tier": { "state": "ENABLED", "variants": { "gold": "gold", "basic": "basic" },
            "defaultVariant": "basic",
            "targeting": { "if": [{ "in": [{ "var": "plan" }, ["vip", "pro"]] }, "gold", null] },
            "metadata": { "owner": "billing", "rank": 3, "beta": true } } },
          "metadata": { "flagSetId": "plans", "nested": 1.5 } }"#;
        let p = FlagsProvider::new(Flags::new(Snapshot::compile_flagd(file, 4).unwrap()));
        let vip = user("u1").with_custom_field("plan", "vip");
        let gold = p.resolve_string_value("tier", &vip).await.unwrap();
        assert_eq!(gold.value, "gold");
        assert_eq!(gold.reason, Some(EvaluationReason::TargetingMatch));
        let meta = gold.flag_metadata.unwrap().values;
        assert_eq!(
            meta.get("owner"),
            Some(&open_feature::FlagMetadataValue::String("billing".into()))
        );
        assert_eq!(
            meta.get("rank"),
            Some(&open_feature::FlagMetadataValue::Int(3))
        );
        assert_eq!(
            meta.get("beta"),
            Some(&open_feature::FlagMetadataValue::Bool(true))
        );
        assert_eq!(
            meta.get("nested"),
            Some(&open_feature::FlagMetadataValue::Float(1.5))
        );
        assert_eq!(
            meta.get("flagSetVersion"),
            Some(&open_feature::FlagMetadataValue::Int(4))
        );
        // `null` targeting: flagd's default variant.
        let basic = p.resolve_string_value("tier", &user("u2")).await.unwrap();
        assert_eq!(basic.value, "basic");
    }

    #[tokio::test]
    async fn typed_resolutions() {
        let p = provider();
        let on = p.resolve_bool_value("on", &user("u1")).await.unwrap();
        assert!(on.value);
        assert_eq!(on.variant.as_deref(), Some("on"));
        assert_eq!(on.reason, Some(EvaluationReason::Static));
        let meta = on.flag_metadata.unwrap();
        assert_eq!(
            meta.values.get("description"),
            Some(&open_feature::FlagMetadataValue::String("always on".into()))
        );
        assert_eq!(
            meta.values.get("flagSetVersion"),
            Some(&open_feature::FlagMetadataValue::Int(9))
        );

        let pro = user("u1").with_custom_field("plan", "pro");
        let mb = p.resolve_int_value("mb", &pro).await.unwrap();
        assert_eq!(
            (mb.value, mb.reason),
            (100, Some(EvaluationReason::TargetingMatch))
        );
        let mb = p.resolve_int_value("mb", &user("u2")).await.unwrap();
        assert_eq!((mb.value, mb.reason), (1, Some(EvaluationReason::Default)));
        assert!((p.resolve_float_value("mb", &pro).await.unwrap().value - 100.0).abs() < 1e-9);
        assert!((p.resolve_float_value("ratio", &pro).await.unwrap().value - 0.5).abs() < 1e-9);

        // A zero value is a value.
        let name = p.resolve_string_value("name", &user("u1")).await.unwrap();
        assert_eq!(name.value, "");
        assert_eq!(name.reason, Some(EvaluationReason::TargetingMatch));

        let cfg = p
            .resolve_struct_value("cfg", &user("u1"))
            .await
            .unwrap()
            .value;
        assert_eq!(cfg.fields.get("n"), Some(&Value::Int(1)));
        assert_eq!(cfg.fields.get("s"), Some(&Value::String("t".into())));
        assert_eq!(
            cfg.fields.get("list"),
            Some(&Value::Array(vec![Value::Int(1), Value::Float(2.5)]))
        );
        assert_eq!(
            cfg.fields.get("nested"),
            Some(&Value::Struct(
                StructValue::default().with_field("ok", true)
            ))
        );
        assert!(!cfg.fields.contains_key("gone"));

        // A date-time attribute compares as a date.
        let late = time_after_2026();
        let since = p
            .resolve_bool_value("since", &user("u1").with_custom_field("signup", late))
            .await
            .unwrap();
        assert!(since.value);
        assert!(
            !p.resolve_bool_value("since", &user("u1"))
                .await
                .unwrap()
                .value
        );
    }

    fn time_after_2026() -> EvaluationContextFieldValue {
        // 2026-06-01T00:00:00Z.
        EvaluationContextFieldValue::DateTime(
            time::OffsetDateTime::from_unix_timestamp(1_780_272_000).unwrap(),
        )
    }

    #[tokio::test]
    async fn errors_and_code_defaults() {
        let p = provider();
        let code = |r: EvaluationResult<ResolutionDetails<bool>>| r.unwrap_err().code;
        assert_eq!(
            code(p.resolve_bool_value("nope", &user("u1")).await),
            EvaluationErrorCode::FlagNotFound
        );
        assert_eq!(
            code(p.resolve_bool_value("mb", &user("u1")).await),
            EvaluationErrorCode::TypeMismatch
        );
        assert_eq!(
            p.resolve_int_value("ratio", &user("u1"))
                .await
                .unwrap_err()
                .code,
            EvaluationErrorCode::TypeMismatch
        );
        assert_eq!(
            p.resolve_struct_value("list", &user("u1"))
                .await
                .unwrap_err()
                .code,
            EvaluationErrorCode::TypeMismatch
        );
        assert_eq!(
            code(p.resolve_bool_value("killed", &user("u1")).await),
            EvaluationErrorCode::General("DISABLED".into())
        );
        assert_eq!(
            p.resolve_string_value("name", &user("u2"))
                .await
                .unwrap_err()
                .code,
            EvaluationErrorCode::General("DEFAULT".into())
        );
        assert_eq!(p.metadata().name, PROVIDER_NAME);
    }

    #[tokio::test]
    async fn status_follows_the_sync_and_changes_are_ours() {
        let store: Arc<dyn FlagStore> = Arc::new(MemoryStore::new());
        store
            .write(0, FLAGS.to_owned(), Change::new("t", "seed"))
            .await
            .unwrap();
        let flags = Flags::new(Snapshot::empty());
        let sync = sync_flags(store.clone(), &flags, SyncConfig::default())
            .await
            .unwrap();
        let p = FlagsProvider::new(flags).with_sync(sync.health());
        assert_eq!(p.status(), ProviderStatus::Ready);
        let mut watch = p.watch("on");

        // A refused document: the last good snapshot serves, reported stale.
        store
            .write(1, "{ not json".to_owned(), Change::new("t", "bad"))
            .await
            .unwrap();
        for _ in 0..200 {
            if sync.rejected_payloads() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.status(), ProviderStatus::STALE);
        assert!(p.resolve_bool_value("on", &user("u1")).await.unwrap().value);

        // A good one again: ready, and the change reaches watchers.
        let fixed = FLAGS.replacen(
            r#""fallthrough": { "variant": "on" } },"#,
            r#""fallthrough": { "variant": "off" } },"#,
            1,
        );
        let v = store
            .write(2, fixed, Change::new("t", "fix"))
            .await
            .unwrap();
        assert!(sync.wait_for_version(v, Duration::from_secs(5)).await);
        assert_eq!(p.status(), ProviderStatus::Ready);
        let change = watch.changed().await.unwrap();
        assert_eq!((&*change.key, change.version), ("on", v));
        assert!(!p.resolve_bool_value("on", &user("u1")).await.unwrap().value);
    }

    #[tokio::test]
    async fn an_empty_provider_without_sync_is_ready() {
        let p = FlagsProvider::new(Flags::new(Snapshot::empty()));
        assert_eq!(p.status(), ProviderStatus::Ready);
    }
}
