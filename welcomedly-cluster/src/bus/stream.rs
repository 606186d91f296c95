//! Durable topics on Redis Streams: the publish script, reply parsing, and the per-topic reader
//! task that follows a stream with `XREAD BLOCK` on a dedicated connection of the link.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Value;
use tokio::sync::broadcast;

use super::offset::{Offset, StreamId};
use super::{Entry, Inner, Signal};

/// Publishes one durable event: the topic's epoch is created on first use (or after Redis lost
/// it), the sequence number incremented, the entry appended with approximate trimming. Both
/// keys share the `{topic}` hash tag, so the script touches one Redis Cluster slot.
///
/// KEYS[1] stream, KEYS[2] meta hash; ARGV[1] epoch candidate, ARGV[2] retention,
/// ARGV[3] payload. Returns `{epoch, n, id}`.
pub(super) const PUBLISH: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'n', 0)
end
local n = redis.call('HINCRBY', KEYS[2], 'n', 1)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', epoch, 'n', n, 'd', ARGV[3])
return {epoch, n, id}
";

/// The script's answer as an offset.
pub(super) fn parse_published(value: &Value) -> Option<Offset> {
    let Value::Array(items) = value else {
        return None;
    };
    let [epoch, n, id] = items.as_slice() else {
        return None;
    };
    Some(Offset {
        id: StreamId::parse(&text(id)?)?,
        epoch: u64::from_str_radix(&text(epoch)?, 16).ok()?,
        n: match n {
            Value::Int(n) => u64::try_from(*n).ok()?,
            other => text(other)?.parse().ok()?,
        },
    })
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn as_list(value: &Value) -> Option<Vec<&Value>> {
    match value {
        Value::Array(items) | Value::Set(items) => Some(items.iter().collect()),
        Value::Map(pairs) => Some(pairs.iter().flat_map(|(k, v)| [k, v]).collect()),
        _ => None,
    }
}

/// One stream entry as read: its id (to advance past it) and, unless it is malformed, the event.
pub(super) struct Read {
    pub(super) id: StreamId,
    pub(super) entry: Option<Entry>,
}

/// Parses an `XRANGE` / `XREVRANGE` reply (a list of `[id, [field, value, …]]`).
pub(super) fn parse_range(value: &Value) -> Option<Vec<Read>> {
    let entries = as_list(value)?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let parts = as_list(entry)?;
        let [id, fields] = parts.as_slice() else {
            return None;
        };
        let id = StreamId::parse(&text(id)?)?;
        out.push(Read {
            id,
            entry: parse_fields(id, fields),
        });
    }
    Some(out)
}

fn parse_fields(id: StreamId, fields: &Value) -> Option<Entry> {
    let fields = as_list(fields)?;
    let (mut epoch, mut n, mut payload) = (None, None, None);
    for pair in fields.chunks_exact(2) {
        let [name, value] = pair else { continue };
        match text(name)?.as_str() {
            "e" => epoch = u64::from_str_radix(&text(value)?, 16).ok(),
            "n" => n = text(value)?.parse::<u64>().ok(),
            "d" => payload = text(value),
            _ => {}
        }
    }
    Some(Entry {
        payload: Arc::from(payload?),
        offset: Some(Offset {
            id,
            epoch: epoch?,
            n: n?,
        }),
    })
}

/// Parses an `XREAD` reply for one stream: `None` (nil) when the block timed out.
pub(super) fn parse_xread(value: &Value) -> Option<Vec<Read>> {
    if matches!(value, Value::Nil) {
        return Some(Vec::new());
    }
    // RESP2: [[key, entries]]; RESP3: {key: entries}.
    let streams = as_list(value)?;
    match streams.as_slice() {
        [Value::Array(pair)] => match pair.as_slice() {
            [_, entries] => parse_range(entries),
            _ => None,
        },
        [_, entries] => parse_range(entries),
        [] => Some(Vec::new()),
        _ => None,
    }
}

/// The last entry of the stream (`XREVRANGE + - COUNT 1`): where "from now" starts.
pub(super) async fn tip(
    mut conn: impl redis::aio::ConnectionLike,
    key: String,
) -> Result<Option<Offset>, redis::RedisError> {
    let value: Value = redis::cmd("XREVRANGE")
        .arg(&key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await?;
    Ok(parse_range(&value)
        .unwrap_or_default()
        .into_iter()
        .find_map(|r| r.entry.and_then(|e| e.offset)))
}

/// Entries after `after` (exclusive), at most `count`.
pub(super) async fn range_after(
    mut conn: impl redis::aio::ConnectionLike,
    key: String,
    after: StreamId,
    count: usize,
) -> Result<Option<Vec<Read>>, redis::RedisError> {
    let value: Value = redis::cmd("XRANGE")
        .arg(&key)
        .arg(format!("({after}"))
        .arg("+")
        .arg("COUNT")
        .arg(count)
        .query_async(&mut conn)
        .await?;
    Ok(parse_range(&value))
}

/// Follows one durable topic's stream and fans its entries out to the local subscribers, until
/// the last of them is gone or the bus is dropped. Holds a dedicated connection from the link's
/// pool (a blocking read on the shared one would stall every call queued behind it) and takes
/// another after a failure, spaced by the link's backoff. Only moves forward: subscribers that were not listening (a reconnect, a lag, a
/// resume from an older offset) catch up from Redis themselves.
pub(super) async fn follow(
    inner: Weak<Inner>,
    topic: Arc<str>,
    tx: broadcast::Sender<Signal>,
    positioned: tokio::sync::watch::Sender<bool>,
) {
    // Where the reader is: the last id it fanned out and that entry's epoch.
    let mut position: Option<(StreamId, Option<u64>)> = None;
    let mut delays: Option<welcomedly_core::backoff::Delays> = None;
    loop {
        if let Some(delays) = delays.as_mut() {
            tokio::time::sleep(delays.next_delay()).await;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.release_reader(&topic, &tx) {
            return;
        }
        let Some(link) = strong.link().cloned() else {
            return;
        };
        let block = strong.block;
        let batch = strong.batch;
        let key = strong.names.stream(&topic);
        let backoff = strong.backoff;
        // A blocking read answers after `block`; past that and a margin, Redis is not answering.
        let response_timeout = block + link.config().budget.max(Duration::from_millis(500));
        drop(strong);
        // On a Redis Cluster: a connection to the node serving the stream's slot (looked up
        // again after a `MOVED`, a demotion or a lost node on it: the next pass lands on the
        // new master).
        let mut pooled = match link.dedicated_for(key.as_bytes()).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(topic = %topic, error = %e, "the bus cannot get a stream reader connection yet");
                delays.get_or_insert_with(|| backoff.delays());
                continue;
            }
        };
        // Returned to the pool when this pass ends (the pool checks it before reusing it).
        drop(link);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if position.is_none() {
            match tokio::time::timeout(response_timeout, tip(&mut pooled, key.clone())).await {
                Ok(Ok(tip)) => {
                    position = Some(tip.map_or((StreamId::ZERO, None), |o| (o.id, Some(o.epoch))));
                    positioned.send_replace(true);
                }
                _ => {
                    delays.get_or_insert_with(|| backoff.delays());
                    continue;
                }
            }
        }
        delays = None;
        drop(strong);
        while let Some((last, epoch)) = position {
            let read = async {
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(batch)
                    .arg("BLOCK")
                    .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX))
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(last.to_string())
                    .query_async::<Value>(&mut pooled)
                    .await
            };
            let outcome = tokio::time::timeout(response_timeout, read).await;
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let value = match outcome {
                Ok(Ok(value)) => value,
                Ok(Err(e)) => {
                    strong
                        .stats
                        .reader_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %topic, error = %e, "the bus's stream reader lost Redis: subscribers catch up from their offsets once it is back");
                    delays.get_or_insert_with(|| backoff.delays());
                    break;
                }
                Err(_) => {
                    strong
                        .stats
                        .reader_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(topic = %topic, "the bus's stream reader got no answer from Redis: reconnecting");
                    delays.get_or_insert_with(|| backoff.delays());
                    break;
                }
            };
            let Some(reads) = parse_xread(&value) else {
                strong.stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %topic, "the bus's stream answered XREAD in an unexpected shape: check that only the bus writes its keys");
                delays.get_or_insert_with(|| backoff.delays());
                break;
            };
            let first_epoch = reads
                .iter()
                .find_map(|r| r.entry.as_ref().and_then(|e| e.offset).map(|o| o.epoch));
            if let (Some(known), Some(seen)) = (epoch, first_epoch)
                && known != seen
                && last != StreamId::ZERO
            {
                // The stream was recreated (Redis lost its data): read the new epoch from its
                // start; subscribers are told of the gap when they see the new epoch.
                position = Some((StreamId::ZERO, Some(seen)));
                continue;
            }
            let mut new_last = last;
            let mut new_epoch = epoch;
            for read in reads {
                new_last = read.id;
                match read.entry {
                    Some(entry) => {
                        new_epoch = entry.offset.map(|o| o.epoch).or(new_epoch);
                        strong.stats.received.fetch_add(1, Ordering::Relaxed);
                        // No receiver is fine: the exit check below notices.
                        let _ = tx.send(Signal::Event(entry));
                    }
                    None => {
                        strong.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(topic = %topic, id = %read.id, "a bus stream entry lacks its epoch, sequence or data: skipped (only the bus should write its streams)");
                    }
                }
            }
            position = Some((new_last, new_epoch));
            if strong.release_reader(&topic, &tx) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, epoch: &str, n: &str, d: &str) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(vec![
                bulk("e"),
                bulk(epoch),
                bulk("n"),
                bulk(n),
                bulk("d"),
                bulk(d),
            ]),
        ])
    }

    #[test]
    fn xread_replies_parse_in_resp2_and_resp3() {
        let entries = Value::Array(vec![
            entry("5-0", "00000000000000ff", "1", "{}"),
            Value::Array(vec![bulk("6-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("k"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("k"), entries)]);
        for reply in [resp2, resp3] {
            let reads = parse_xread(&reply).unwrap();
            assert_eq!(reads.len(), 2);
            let first = reads[0].entry.as_ref().unwrap();
            assert_eq!(first.offset.unwrap().epoch, 255);
            assert_eq!(&*first.payload, "{}");
            assert!(reads[1].entry.is_none(), "a malformed entry is kept apart");
            assert_eq!(reads[1].id, StreamId { ms: 6, seq: 0 });
        }
        assert!(parse_xread(&Value::Nil).unwrap().is_empty());
    }

    #[test]
    fn the_publish_answer_parses() {
        let v = Value::Array(vec![bulk("00000000000000ff"), Value::Int(3), bulk("9-1")]);
        let o = parse_published(&v).unwrap();
        assert_eq!((o.epoch, o.n, o.id), (255, 3, StreamId { ms: 9, seq: 1 }));
        assert!(parse_published(&Value::Nil).is_none());
    }
}
