// Local cache over wx storage with expiry and a schema version, so that an app update
// that changes a cached shape does not read stale data written by the previous version.
const SCHEMA = 3;
const PREFIX = 'hc:';

function now() {
  return Date.now();
}

function set(key, value, ttlSeconds = 0) {
  const entry = { v: SCHEMA, value, expires: ttlSeconds > 0 ? now() + ttlSeconds * 1000 : 0 };
  try {
    wx.setStorageSync(PREFIX + key, entry);
    return true;
  } catch (e) {
    // Storage is full (10 MB per app): drop expired entries once and retry.
    sweep();
    try {
      wx.setStorageSync(PREFIX + key, entry);
      return true;
    } catch (e2) {
      return false;
    }
  }
}

function get(key, fallback = null) {
  let entry;
  try {
    entry = wx.getStorageSync(PREFIX + key);
  } catch (e) {
    return fallback;
  }
  if (!entry || entry.v !== SCHEMA) return fallback;
  if (entry.expires && entry.expires <= now()) {
    remove(key);
    return fallback;
  }
  return entry.value;
}

function remove(key) {
  try {
    wx.removeStorageSync(PREFIX + key);
  } catch (e) {
    // nothing to do: a missing key is already removed
  }
}

// Returns the cached value, or calls load() (a promise), caches and returns its result.
// Concurrent callers for the same key share one load.
const inflight = {};
function remember(key, ttlSeconds, load) {
  const hit = get(key);
  if (hit !== null) return Promise.resolve(hit);
  if (!inflight[key]) {
    inflight[key] = Promise.resolve()
      .then(load)
      .then((value) => {
        set(key, value, ttlSeconds);
        return value;
      })
      .finally(() => {
        delete inflight[key];
      });
  }
  return inflight[key];
}

function sweep() {
  let info;
  try {
    info = wx.getStorageInfoSync();
  } catch (e) {
    return 0;
  }
  let removed = 0;
  info.keys.filter((k) => k.startsWith(PREFIX)).forEach((k) => {
    const entry = wx.getStorageSync(k);
    if (!entry || entry.v !== SCHEMA || (entry.expires && entry.expires <= now())) {
      wx.removeStorageSync(k);
      removed += 1;
    }
  });
  return removed;
}

module.exports = { SCHEMA, set, get, remove, remember, sweep };
