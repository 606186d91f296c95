//! The JSON log format: one object per line, written without intermediate JSON values.
//!
//! tracing-subscriber's own JSON format stores each span's fields as a JSON object, parses and
//! re-serialises it on every `Span::record` and parses it again for every event; with the four
//! fields the HTTP layer records per request that cost about 4 µs. Here a span's fields are kept
//! as a JSON *fragment* (`"k":v,"k2":v2`): recording appends to it and an event copies it.
//!
//! A line looks like `{"timestamp":"2026-11-25T10:00:00.000000Z","level":"INFO",
//! "target":"app","message":"user loaded","user":42,"spans":[{"name":"request",
//! "request_id":"…","trace_id":"…"}]}`: the event's fields at the top level, then the current
//! span and its parents, root first.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing::{Event, Span, Subscriber};
use tracing_subscriber::Registry;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats fields as a JSON object body without braces.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonFields;

impl<'w> FormatFields<'w> for JsonFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // tracing-subscriber hands a new span an empty `String` behind a `&mut dyn Write`: piece
        // by piece that is a virtual call per piece and a reallocation every time the fragment
        // doubles. Formatting into a reused buffer and copying once allocates once.
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buffer) => {
                buffer.clear();
                let result = write_fields(&mut *buffer, true, &fields)
                    .and_then(|()| writer.write_str(&buffer));
                if buffer.capacity() > MAX_SCRATCH {
                    // One huge field must not pin its memory to the thread forever.
                    *buffer = String::new();
                }
                result
            }
            // Re-entered: a field's `Debug` implementation logged while being formatted.
            Err(_) => write_fields(&mut writer, true, &fields),
        })
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        write_fields(&mut current.fields, first, fields)
    }
}

/// Appends `"trace_id":"…","span_id":"…"` to the JSON fields of `span` directly, when `span`
/// belongs to a subscriber formatting with [`JsonFields`] (the one [`Telemetry`] builds), and
/// returns whether it did; otherwise the caller records them with `Span::record`.
///
/// Recording would dispatch the two values to every layer, and in that subscriber only this
/// formatter needs them: the OpenTelemetry span has its ids natively (recorded, they became two
/// duplicate attributes, a `String` each) and the filter has no directive on them. Skipping
/// that dispatch spares about a tenth of the layer's cost per request.
///
/// [`Telemetry`]: super::Telemetry
pub(crate) fn append_trace_ids(span: &Span, trace_id: &str, span_id: &str) -> bool {
    span.with_subscriber(|(id, dispatch)| {
        let Some(span) = dispatch
            .downcast_ref::<Registry>()
            .and_then(|registry| registry.span(id))
        else {
            return false;
        };
        let mut extensions = span.extensions_mut();
        let Some(fields) = extensions.get_mut::<FormattedFields<JsonFields>>() else {
            return false;
        };
        let text = &mut fields.fields;
        if !text.is_empty() {
            text.push(',');
        }
        // Hex digits only: nothing to escape.
        for part in [
            "\"trace_id\":\"",
            trace_id,
            "\",\"span_id\":\"",
            span_id,
            "\"",
        ] {
            text.push_str(part);
        }
        true
    })
    .unwrap_or(false)
}

/// The largest scratch buffer a thread keeps between two spans.
const MAX_SCRATCH: usize = 4096;

thread_local! {
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

fn write_fields(
    writer: &mut impl fmt::Write,
    first: bool,
    fields: &impl RecordFields,
) -> fmt::Result {
    let mut visitor = Visitor::new(writer, first);
    fields.record(&mut visitor);
    visitor.result
}

/// Writes one event per line as a JSON object.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JsonFormat;

impl<S> FormatEvent<S, JsonFields> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", meta.level())?;
        write_escaped(&mut writer, meta.target())?;
        let mut visitor = Visitor::new(&mut writer, false);
        event.record(&mut visitor);
        visitor.result?;
        if let Some(scope) = ctx.event_scope() {
            writer.write_str(",\"spans\":[")?;
            for (i, span) in scope.from_root().enumerate() {
                if i > 0 {
                    writer.write_char(',')?;
                }
                writer.write_str("{\"name\":")?;
                write_escaped(&mut writer, span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<JsonFields>>()
                    && !fields.fields.is_empty()
                {
                    writer.write_char(',')?;
                    writer.write_str(&fields.fields)?;
                }
                writer.write_char('}')?;
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// Appends `"name":value` pairs, comma-separated.
struct Visitor<'a, W> {
    writer: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<'a, W: fmt::Write> Visitor<'a, W> {
    fn new(writer: &'a mut W, first: bool) -> Self {
        Self {
            writer,
            first,
            result: Ok(()),
        }
    }

    fn key(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(',')?;
        }
        write_escaped(self.writer, field.name())?;
        self.writer.write_char(':')
    }

    fn pair(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.writer));
        }
    }
}

impl<W: fmt::Write> Visit for Visitor<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.pair(field, |w| write_escaped(w, value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.pair(field, |w| w.write_str(if value { "true" } else { "false" }));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.pair(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.pair(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.pair(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.pair(field, |w| w.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities.
        self.pair(field, |w| {
            if value.is_finite() {
                write!(w, "{value}")
            } else {
                w.write_str("null")
            }
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.pair(field, |w| {
            w.write_char('"')?;
            write!(Escaping(&mut *w), "{value:?}")?;
            w.write_char('"')
        });
    }
}

fn write_escaped(writer: &mut impl fmt::Write, text: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaping(&mut *writer).write_str(text)?;
    writer.write_char('"')
}

/// Escapes what JSON strings cannot hold as-is, while writing through.
struct Escaping<W>(W);

impl<W: fmt::Write> fmt::Write for Escaping<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        // Ids, routes and most messages need no escaping: a branch-free scan (which the compiler
        // vectorises) lets them through in one write.
        if !text.bytes().fold(false, |found, byte| {
            found | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
        }) {
            return self.0.write_str(text);
        }
        // A byte scan: every byte to escape is ASCII, so the plain runs between them split
        // `text` on character boundaries.
        let mut plain_from = 0;
        for (at, &byte) in text.as_bytes().iter().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0
                .write_str(text.get(plain_from..at).unwrap_or_default())?;
            if escaped.is_empty() {
                write!(self.0, "\\u{:04x}", byte)?;
            } else {
                self.0.write_str(escaped)?;
            }
            plain_from = at + 1;
        }
        self.0.write_str(text.get(plain_from..).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields)
                .event_format(JsonFormat)
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn every_kind_of_value_makes_valid_json() {
        let lines = lines(|| {
            let outer =
                tracing::info_span!("outer", a = "x\"y\\z\n\u{1b}", n = tracing::field::Empty);
            let _o = outer.enter();
            outer.record("n", 5_u64);
            let inner = tracing::info_span!("inner", ok = true);
            let _i = inner.enter();
            tracing::info!(
                i = -3_i64,
                big = u128::MAX,
                f = 1.5_f64,
                nan = f64::NAN,
                dbg = ?vec!["q\"uote"],
                "hello {}", "world"
            );
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["message"], "hello world");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["i"], -3);
        assert_eq!(line["f"], 1.5);
        assert!(line["nan"].is_null());
        // serde_json reads integers beyond u64 as f64; the digits were written exactly.
        assert!(line["big"].as_f64().unwrap() > 3.4e38);
        assert_eq!(line["dbg"], "[\"q\\\"uote\"]");
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["spans"][0]["name"], "outer");
        assert_eq!(line["spans"][0]["a"], "x\"y\\z\n\u{1b}");
        assert_eq!(line["spans"][0]["n"], 5, "recorded after creation");
        assert_eq!(line["spans"][1]["ok"], true);
    }

    #[test]
    fn a_span_whose_fields_are_all_recorded_later_is_valid() {
        let lines = lines(|| {
            let span =
                tracing::info_span!("s", a = tracing::field::Empty, b = tracing::field::Empty);
            let _e = span.enter();
            span.record("a", 1);
            span.record("b", 2);
            tracing::warn!("outside-of-nothing");
        });
        assert_eq!(lines[0]["spans"][0]["a"], 1);
        assert_eq!(lines[0]["spans"][0]["b"], 2);
        assert!(lines[0].get("spans").is_some());
    }

    /// Formats as its text, but opens a span with fields while doing so: span formatting
    /// re-entered on one thread.
    struct Reentrant(&'static str);

    impl fmt::Debug for Reentrant {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let _inner = tracing::info_span!("inner", n = 1);
            f.write_str(self.0)
        }
    }

    #[test]
    fn span_fields_formatted_while_formatting_span_fields_stay_apart() {
        let lines = lines(|| {
            let outer = tracing::info_span!("outer", a = "x", r = ?Reentrant("r"), z = 2);
            let _o = outer.enter();
            tracing::info!("inside");
        });
        let span = &lines[0]["spans"][0];
        assert_eq!(span["a"], "x");
        assert_eq!(span["r"], "r");
        assert_eq!(span["z"], 2);
    }

    #[test]
    fn trace_ids_are_appended_to_json_span_fields() {
        let lines = lines(|| {
            let span = tracing::info_span!("request", a = 1, trace_id = tracing::field::Empty);
            assert!(append_trace_ids(&span, "4bf9", "00f0"));
            let empty = tracing::info_span!(parent: &span, "empty");
            assert!(append_trace_ids(&empty, "aa", "bb"));
            let _s = span.enter();
            let _e = empty.enter();
            tracing::info!("inside");
        });
        let spans = &lines[0]["spans"];
        assert_eq!(spans[0]["a"], 1);
        assert_eq!(spans[0]["trace_id"], "4bf9");
        assert_eq!(spans[0]["span_id"], "00f0");
        assert_eq!(spans[1]["trace_id"], "aa", "a span without fields");
    }

    #[test]
    fn trace_ids_are_not_appended_under_another_format() {
        let subscriber = tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(io::sink));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
            assert!(!append_trace_ids(&span, "4bf9", "00f0"));
        });
        assert!(!append_trace_ids(&tracing::Span::none(), "4bf9", "00f0"));
    }

    #[test]
    fn events_outside_spans_have_no_span_list() {
        let lines = lines(|| tracing::error!(code = 7, "boom"));
        assert_eq!(lines[0]["code"], 7);
        assert!(lines[0].get("spans").is_none());
    }
}
