const { pluralize } = require('../../utils/format');

Page({
  data: { user: null, stamps: 0, stampText: '' },

  onShow() {
    const user = getApp().globalData.user;
    const stamps = (user && user.stamps) || 0;
    this.setData({ user, stamps, stampText: pluralize(stamps, 'stamp') });
  },

  openCoupons() { wx.navigateTo({ url: '/moduleCoupon/pages/claim/claim' }); },
  openOrders() { wx.navigateTo({ url: '/packageOrder/pages/history/history' }); },
});
