const { request } = require('../../../utils/request');
const { total } = require('../../../utils/cart');
const { formatPrice } = require('../../../utils/format');
const { checkNote } = require('../../../utils/validate');
const { pickupSlots } = require('../../utils/slots');

Page({
  data: { slots: [], slot: 0, note: '', totalText: '', submitting: false },

  onLoad() {
    const cart = getApp().globalData.cart;
    this.setData({ slots: pickupSlots(new Date()), totalText: formatPrice(total(cart).total) });
  },

  onSlot(e) { this.setData({ slot: Number(e.detail.value) }); },
  onNote(e) { this.setData({ note: e.detail.value }); },

  submit() {
    if (this.data.submitting) return;
    const noteError = checkNote(this.data.note);
    if (noteError) {
      wx.showToast({ title: noteError, icon: 'none' });
      return;
    }
    const app = getApp();
    this.setData({ submitting: true });
    request({
      path: '/orders', method: 'POST',
      data: { store: app.globalData.store && app.globalData.store.id, lines: app.globalData.cart,
              pickup: this.data.slots[this.data.slot], note: this.data.note },
    }).then((order) => request({ path: `/orders/${order.id}/pay`, method: 'POST' }))
      .then((pay) => new Promise((resolve, reject) => wx.requestPayment({ ...pay, success: resolve, fail: reject })))
      .then(() => {
        app.globalData.cart = [];
        wx.redirectTo({ url: '/packageOrder/pages/history/history' });
      })
      .catch((err) => wx.showToast({ title: err.message || 'Payment failed', icon: 'none' }))
      .then(() => this.setData({ submitting: false }));
  },
});
