// Input checks for forms: phone numbers, order notes, coupon codes and invoice titles.
// Each check returns '' when the value is fine, or the message to show next to the field.

const MAINLAND_MOBILE = /^1[3-9]\d{9}$/;
const HK_MO_MOBILE = /^[5-9]\d{7}$/;
const NOTE_MAX = 60;
const CODE_ALPHABET = '23456789ABCDEFGHJKLMNPQRSTUVWXYZ';

function normalizePhone(text) {
  let s = String(text || '').replace(/[\s-]/g, '');
  if (s.startsWith('+86')) s = s.slice(3);
  else if (s.startsWith('0086')) s = s.slice(4);
  return s;
}

function checkPhone(text) {
  const s = normalizePhone(text);
  if (!s) return 'Please enter a phone number';
  if (MAINLAND_MOBILE.test(s) || HK_MO_MOBILE.test(s)) return '';
  return 'That does not look like a mobile number';
}

function maskPhone(text) {
  const s = normalizePhone(text);
  return s.length === 11 ? `${s.slice(0, 3)}****${s.slice(7)}` : s;
}

// Notes go to the barista's ticket printer: limited length, no emoji (the printer drops them).
function checkNote(text) {
  const s = String(text || '');
  if ([...s].length > NOTE_MAX) return `Notes are limited to ${NOTE_MAX} characters`;
  if (/[\u{1F300}-\u{1FAFF}\u{2600}-\u{27BF}]/u.test(s)) return 'Emoji cannot be printed on the ticket';
  return '';
}

// Coupon codes: 10 characters from CODE_ALPHABET, the last one a checksum of the others,
// so typos are caught before a network round trip. Dashes and spaces are ignored.
function normalizeCode(text) {
  return String(text || '').toUpperCase().replace(/[\s-]/g, '');
}

function codeChecksum(body) {
  let sum = 0;
  for (let i = 0; i < body.length; i += 1) {
    const v = CODE_ALPHABET.indexOf(body[i]);
    if (v < 0) return null;
    sum = (sum * 7 + v * (i + 3)) % CODE_ALPHABET.length;
  }
  return CODE_ALPHABET[sum];
}

function checkCouponCode(text) {
  const s = normalizeCode(text);
  if (!s) return 'Please enter a code';
  if (s.length !== 10) return 'Codes have 10 characters';
  const expected = codeChecksum(s.slice(0, 9));
  if (expected === null) return 'Codes use letters and digits 2–9 only';
  if (expected !== s[9]) return 'Please check the code for typos';
  return '';
}

function formatCode(text) {
  const s = normalizeCode(text);
  return s.replace(/(.{4})(?=.)/g, '$1-');
}

// Company invoice titles: 2–50 characters; the 18-character unified social credit code is optional.
function checkInvoice({ title, taxId }) {
  const t = String(title || '').trim();
  if (t.length < 2 || t.length > 50) return 'Invoice title must be 2–50 characters';
  if (taxId && !/^[0-9A-HJ-NPQRTUWXY]{2}\d{6}[0-9A-HJ-NPQRTUWXY]{10}$/.test(String(taxId).toUpperCase())) {
    return 'Tax ID should have 18 characters';
  }
  return '';
}

// Runs a map of field -> check over a form; returns { ok, errors }.
function checkForm(values, checks) {
  const errors = {};
  Object.keys(checks).forEach((field) => {
    const message = checks[field](values[field], values);
    if (message) errors[field] = message;
  });
  return { ok: Object.keys(errors).length === 0, errors };
}

module.exports = {
  NOTE_MAX, normalizePhone, checkPhone, maskPhone, checkNote, normalizeCode, codeChecksum,
  checkCouponCode, formatCode, checkInvoice, checkForm,
};
