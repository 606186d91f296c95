//! The store's key names and its one write script.

/// The names of the store's keys and channel: one hash tag, so the write script's keys share a
/// Redis Cluster slot (no `CROSSSLOT`) and the script works unchanged on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisKeys {
    /// The document (a string): `{wd:flags}:doc`.
    pub doc: String,
    /// The version counter (an integer string; absent = 0): `{wd:flags}:version`.
    pub version: String,
    /// The history (a list of JSON entries, newest first): `{wd:flags}:history`.
    pub history: String,
    /// The total size of the history's entries in bytes (an integer string, kept by the write
    /// script; recounted when absent): `{wd:flags}:history_bytes`.
    pub history_bytes: String,
    /// The SHA-1 (hex) of the document, written with it by the write script:
    /// `{wd:flags}:digest`. A version number reused with other content (a write acknowledged,
    /// then lost in a failover, and the number written again) has another digest, so
    /// instances serving the lost content see it as new. Absent for documents written before
    /// it existed.
    pub digest: String,
    /// The pub/sub channel each new version is published on (its decimal text):
    /// `{wd:flags}:changes`.
    pub channel: String,
    /// The highest guarded-rollout fencing token seen per flag (a hash: flag key → token),
    /// checked and raised by the write script: `{wd:flags}:fences`. One field per flag ever
    /// rolled out (flag keys are the operator's, never a client's).
    pub fences: String,
}

impl RedisKeys {
    /// The names under `prefix`. A prefix already holding a hash tag (`app:{flags}`) is used
    /// as is; otherwise it becomes the tag (`wd:flags` → `{wd:flags}`).
    pub fn new(prefix: &str) -> Self {
        // Redis' own rule: the first `{` and the first `}` after it, not empty.
        let tagged = if welcomedly_redis::slot::hash_tag(prefix.as_bytes()) == prefix.as_bytes() {
            format!("{{{prefix}}}")
        } else {
            prefix.to_owned()
        };
        Self {
            doc: format!("{tagged}:doc"),
            version: format!("{tagged}:version"),
            history: format!("{tagged}:history"),
            history_bytes: format!("{tagged}:history_bytes"),
            digest: format!("{tagged}:digest"),
            channel: format!("{tagged}:changes"),
            fences: format!("{tagged}:fences"),
        }
    }
}

impl RedisKeys {
    /// Whether every key and the channel live in one Redis Cluster slot (the write script
    /// names them together).
    pub(super) fn share_one_slot(&self) -> bool {
        welcomedly_redis::slot::same_slot(&[
            &self.doc,
            &self.version,
            &self.history,
            &self.history_bytes,
            &self.digest,
            &self.fences,
        ])
    }
}

/// Fence check, compare-and-set, store, bump, record, announce — atomically.
///
/// `KEYS`: doc, version, history, history bytes, digest, fences (one hash tag: one slot).
/// `ARGV`: expected version, body, history entry (a JSON object without `version`, starting
/// with `{` and holding at least one field), history cap, channel, history byte budget, then
/// the fenced flag (`""`: an unfenced write) and its token. Returns `{1, new_version}` on
/// success, `{0, current_version}` on a conflict, `{2, seen_token}` when the fences hash holds
/// a larger token for the flag (nothing written), or an error reply `WDFLAGS …` when the
/// version key holds something else than an integer. A token at least the one seen is
/// recorded as the highest seen before the version is compared (the token is legitimate
/// whether or not this write wins the compare-and-set).
///
/// The entry's `version` is spliced in as text rather than through `cjson`, whose number
/// encoding (`%.14g`) would round large integers inside the caller's diff. Lua numbers are
/// doubles: versions are exact below 2^53.
///
/// The history is trimmed from its oldest end until it holds at most `cap` entries of at most
/// `budget` bytes together (the newest entry always stays). The running total lives in the
/// history-bytes key, so a write reads no old entry; when that key is absent (a history written
/// before it existed, or the key deleted) the total is recounted from the newest entry on, reading
/// no more than the budget (plus one entry) before the rest is cut.
pub(super) const WRITE: &str = r#"
if ARGV[7] ~= '' then
  local seen = tonumber(redis.call('HGET', KEYS[6], ARGV[7]) or '0') or 0
  local token = tonumber(ARGV[8])
  if seen > token then return {2, seen} end
  if seen < token then redis.call('HSET', KEYS[6], ARGV[7], ARGV[8]) end
end
local raw = redis.call('GET', KEYS[2])
local current = 0
if raw then
  current = tonumber(raw)
  if not current then
    return redis.error_reply('WDFLAGS the version key does not hold an integer')
  end
end
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local new = current + 1
local v = string.format('%.0f', new)
local cap = tonumber(ARGV[4])
local budget = tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], v)
redis.call('SET', KEYS[5], redis.sha1hex(ARGV[2]))
local entry = '{"version":' .. v .. ',' .. string.sub(ARGV[3], 2)
redis.call('LPUSH', KEYS[3], entry)
local total = tonumber(redis.call('GET', KEYS[4]) or '')
if total then
  total = total + #entry
  local len = redis.call('LLEN', KEYS[3])
  while len > 1 and (len > cap or total > budget) do
    local dropped = redis.call('RPOP', KEYS[3])
    if not dropped then break end
    total = total - #dropped
    len = len - 1
  end
else
  total = 0
  local kept = 0
  local done = false
  while not done do
    local chunk = redis.call('LRANGE', KEYS[3], kept, kept + 15)
    if #chunk == 0 then break end
    for _, e in ipairs(chunk) do
      if kept > 0 and (kept >= cap or total + #e > budget) then
        done = true
        break
      end
      total = total + #e
      kept = kept + 1
    end
  end
  redis.call('LTRIM', KEYS[3], 0, kept - 1)
end
redis.call('SET', KEYS[4], string.format('%.0f', total))
redis.call('PUBLISH', ARGV[5], v)
return {1, new}
"#;

/// Raises a flag's fence without writing the document. `KEYS`: fences. `ARGV`: flag, token.
/// Returns `{1, token}` when recorded (or already there), `{2, seen_token}` when a larger token
/// was seen.
pub(super) const RAISE_FENCE: &str = r"
local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') or 0
local token = tonumber(ARGV[2])
if seen > token then return {2, seen} end
if seen < token then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return {1, token}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_shares_one_hash_tag() {
        let k = RedisKeys::new("wd:flags");
        assert_eq!(k.doc, "{wd:flags}:doc");
        assert_eq!(k.version, "{wd:flags}:version");
        assert_eq!(k.history, "{wd:flags}:history");
        assert_eq!(k.history_bytes, "{wd:flags}:history_bytes");
        assert_eq!(k.digest, "{wd:flags}:digest");
        assert_eq!(k.fences, "{wd:flags}:fences");
        assert!(welcomedly_redis::slot::same_slot(&[
            &k.doc,
            &k.version,
            &k.history,
            &k.history_bytes,
            &k.digest,
            &k.fences,
            &k.channel
        ]));
        assert_eq!(k.channel, "{wd:flags}:changes");
        let k = RedisKeys::new("app:{flags}");
        assert_eq!(k.doc, "app:{flags}:doc");
        // An empty tag `{}` hashes the whole key: wrap instead.
        assert_eq!(RedisKeys::new("a{}").doc, "{a{}}:doc");
        assert_eq!(RedisKeys::new("{}{a}").doc, "{{}{a}}:doc");
        assert!(RedisKeys::new("{}{a}").share_one_slot());
        // A prefix whose braces defeat any tag is refused by the store's settings.
        assert!(!RedisKeys::new("}x").share_one_slot());
    }
}
