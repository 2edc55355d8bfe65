const { total } = require('../../utils/cart');
const { formatPrice } = require('../../utils/format');

Page({
  data: { lines: [], subtotal: '0.00', discount: '0.00', total: '0.00' },

  onShow() { this.render(); },

  render() {
    const cart = getApp().globalData.cart;
    const sums = total(cart, wx.getStorageSync('coupons') || []);
    this.setData({
      lines: cart.map((l) => ({ ...l, priceText: formatPrice(l.price * l.qty) })),
      subtotal: formatPrice(sums.subtotal),
      discount: formatPrice(sums.discount),
      total: formatPrice(sums.total),
    });
  },

  checkout() {
    wx.navigateTo({ url: '/packageOrder/pages/checkout/checkout' });
  },
});
