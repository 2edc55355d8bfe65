const { request } = require('../../utils/request');
const { relativeDay, formatDistance } = require('../../utils/format');
const { parseSchedule, statusText } = require('../../utils/hours');
const cache = require('../../utils/storage');

Page({
  data: { store: null, banners: [], news: [], loading: true },

  onLoad() {
    this.refresh();
  },

  onPullDownRefresh() {
    this.refresh().then(() => wx.stopPullDownRefresh());
  },

  refresh() {
    this.setData({ loading: true });
    return Promise.all([
      cache.remember('banners', 600, () => request({ path: '/banners' })).catch(() => []),
      request({ path: '/news', query: { limit: 5 } }).catch(() => []),
    ]).then(([banners, news]) => {
      const store = getApp().globalData.store;
      this.setData({
        loading: false,
        banners,
        store: store && {
          ...store,
          distanceText: formatDistance(store.distance || 0),
          statusText: statusText(parseSchedule(store.hours), new Date(), store.holidays || {}),
        },
        news: news.map((n) => ({ ...n, when: relativeDay(n.publishedAt) })),
      });
    });
  },

  goMenu() { wx.switchTab({ url: '/pages/menu/menu' }); },
  goCoupons() { wx.navigateTo({ url: '/moduleCoupon/pages/claim/claim' }); },
  goHistory() { wx.navigateTo({ url: '/packageOrder/pages/history/history' }); },
});
