// Opening hours: weekly schedules such as "Mon-Fri 07:00-20:00; Sat,Sun 08:30-18:00",
// holiday overrides, "open now?" and "opens at" texts for the store card.
const { pad } = require('./format');

const DAY_NAMES = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MINUTES_PER_DAY = 24 * 60;

function parseClock(text) {
  const m = /^(\d{1,2}):(\d{2})$/.exec(String(text).trim());
  if (!m) throw new Error(`bad time "${text}"`);
  const h = Number(m[1]);
  const min = Number(m[2]);
  if (h > 24 || min > 59 || (h === 24 && min !== 0)) throw new Error(`bad time "${text}"`);
  return h * 60 + min;
}

function clockText(minutes) {
  const m = ((minutes % MINUTES_PER_DAY) + MINUTES_PER_DAY) % MINUTES_PER_DAY;
  return `${pad(Math.floor(m / 60))}:${pad(m % 60)}`;
}

function parseDays(text) {
  const days = new Set();
  text.split(',').forEach((part) => {
    const [from, to] = part.trim().split('-');
    const a = DAY_NAMES.indexOf(from);
    const b = to === undefined ? a : DAY_NAMES.indexOf(to);
    if (a < 0 || b < 0) throw new Error(`bad day range "${part}"`);
    for (let d = a; ; d = (d + 1) % 7) {
      days.add(d);
      if (d === b) break;
    }
  });
  return days;
}

// "Mon-Fri 07:00-20:00; Sat,Sun 08:30-18:00" -> [[day 0 ranges], ..., [day 6 ranges]]
// A range may pass midnight ("Fri 18:00-02:00"): the part after midnight is put on the next day.
function parseSchedule(text) {
  const week = [[], [], [], [], [], [], []];
  String(text || '').split(';').map((s) => s.trim()).filter(Boolean).forEach((rule) => {
    const space = rule.lastIndexOf(' ');
    if (space < 0) throw new Error(`bad rule "${rule}"`);
    const days = parseDays(rule.slice(0, space));
    rule.slice(space + 1).split(',').forEach((span) => {
      const [open, close] = span.split('-').map(parseClock);
      days.forEach((d) => {
        if (close > open) week[d].push([open, close]);
        else {
          week[d].push([open, MINUTES_PER_DAY]);
          if (close > 0) week[(d + 1) % 7].push([0, close]);
        }
      });
    });
  });
  week.forEach((ranges) => ranges.sort((x, y) => x[0] - y[0]));
  return week;
}

function dateKey(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

// overrides: { "2024-12-25": [] (closed), "2024-12-24": [[420, 900]] }
function rangesOn(week, date, overrides = {}) {
  const key = dateKey(date);
  if (Object.prototype.hasOwnProperty.call(overrides, key)) return overrides[key];
  return week[date.getDay()];
}

function isOpen(week, now = new Date(), overrides = {}) {
  const minute = now.getHours() * 60 + now.getMinutes();
  return rangesOn(week, now, overrides).some(([a, b]) => minute >= a && minute < b);
}

// The next time the store opens, looking up to a week ahead; null if it never does.
function nextOpening(week, now = new Date(), overrides = {}) {
  const minute = now.getHours() * 60 + now.getMinutes();
  for (let offset = 0; offset < 8; offset += 1) {
    const day = new Date(now.getFullYear(), now.getMonth(), now.getDate() + offset);
    const ranges = rangesOn(week, day, overrides);
    const hit = ranges.find(([a]) => offset > 0 || a > minute);
    if (hit) return { day, minute: hit[0], inDays: offset };
  }
  return null;
}

function closingTime(week, now = new Date(), overrides = {}) {
  const minute = now.getHours() * 60 + now.getMinutes();
  const range = rangesOn(week, now, overrides).find(([a, b]) => minute >= a && minute < b);
  return range ? range[1] : null;
}

// The one-line status shown on the home page store card.
function statusText(week, now = new Date(), overrides = {}) {
  if (isOpen(week, now, overrides)) {
    const close = closingTime(week, now, overrides);
    const left = close - (now.getHours() * 60 + now.getMinutes());
    if (close >= MINUTES_PER_DAY) return 'Open · closes after midnight';
    return left <= 30 ? `Closing soon · ${clockText(close)}` : `Open · until ${clockText(close)}`;
  }
  const next = nextOpening(week, now, overrides);
  if (!next) return 'Temporarily closed';
  if (next.inDays === 0) return `Closed · opens at ${clockText(next.minute)}`;
  if (next.inDays === 1) return `Closed · opens tomorrow ${clockText(next.minute)}`;
  return `Closed · opens ${DAY_NAMES[next.day.getDay()]} ${clockText(next.minute)}`;
}

// Rows for the "opening hours" sheet, Monday first, e.g. { day: 'Mon', text: '07:00–20:00' }.
function weekTable(week) {
  return [1, 2, 3, 4, 5, 6, 0].map((d) => ({
    day: DAY_NAMES[d],
    text: week[d].length
      ? week[d].map(([a, b]) => `${clockText(a)}–${b >= MINUTES_PER_DAY ? '24:00' : clockText(b)}`).join(', ')
      : 'Closed',
  }));
}

module.exports = {
  parseClock, clockText, parseSchedule, isOpen, nextOpening, closingTime, statusText, weekTable,
};
