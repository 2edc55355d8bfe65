// The cart lives in storage so it survives restarts; lines are keyed by item and options.
const KEY = 'cart:v2';

function loadCart() {
  try {
    const raw = wx.getStorageSync(KEY);
    return Array.isArray(raw) ? raw.filter((l) => l && l.id && l.qty > 0) : [];
  } catch (e) {
    return [];
  }
}

function saveCart(cart) {
  wx.setStorageSync(KEY, cart);
}

function total(cart, coupons = []) {
  const subtotal = cart.reduce((sum, l) => sum + l.price * l.qty, 0);
  const discount = coupons.reduce((best, c) => {
    if (subtotal < (c.minSpend || 0)) return best;
    const value = c.kind === 'percent' ? Math.floor((subtotal * c.value) / 100) : c.value;
    return Math.max(best, value);
  }, 0);
  return { subtotal, discount, total: Math.max(0, subtotal - discount) };
}

function count(cart) {
  return cart.reduce((n, l) => n + l.qty, 0);
}

module.exports = { loadCart, saveCart, total, count };
