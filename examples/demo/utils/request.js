// A small request wrapper: base URL, token, retries with backoff, and errors as values.
const RETRY_STATUSES = [502, 503, 504];
const MAX_RETRIES = 2;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function buildUrl(base, path, query) {
  const url = path.startsWith('http') ? path : `${base}${path}`;
  if (!query) return url;
  const parts = Object.keys(query)
    .filter((k) => query[k] !== undefined && query[k] !== null)
    .map((k) => `${encodeURIComponent(k)}=${encodeURIComponent(query[k])}`);
  return parts.length ? `${url}${url.includes('?') ? '&' : '?'}${parts.join('&')}` : url;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

function once({ url, method, data, header, timeout }) {
  return new Promise((resolve, reject) => {
    wx.request({
      url, method, data, header, timeout,
      success: (res) => {
        if (res.statusCode >= 200 && res.statusCode < 300) resolve(res.data);
        else {
          const body = res.data || {};
          reject(new ApiError(res.statusCode, body.error, body.message));
        }
      },
      fail: (err) => reject(new ApiError(0, 'network', err.errMsg)),
    });
  });
}

async function request({ path, method = 'GET', data, query, timeout = 10000 }) {
  const app = getApp();
  const base = (app && app.globalData.apiBase) || '';
  const token = wx.getStorageSync('token');
  const header = { 'content-type': 'application/json' };
  if (token) header.Authorization = `Bearer ${token}`;
  const url = buildUrl(base, path, query);
  let attempt = 0;
  for (;;) {
    try {
      return await once({ url, method, data, header, timeout });
    } catch (err) {
      const retryable = err.status === 0 || RETRY_STATUSES.includes(err.status);
      if (!retryable || attempt >= MAX_RETRIES || method !== 'GET') throw err;
      attempt += 1;
      await sleep(200 * 2 ** attempt);
    }
  }
}

module.exports = { request, buildUrl, ApiError };
