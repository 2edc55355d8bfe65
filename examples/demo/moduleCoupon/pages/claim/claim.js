// An independent subpackage: it runs without the main package (opened from a QR code on a
// cup sleeve), so it brings its own tiny request helper instead of using utils/.
const API = 'https://api.harbour-coffee.example/v2';

function call(path, method = 'GET', data) {
  return new Promise((resolve, reject) => wx.request({
    url: API + path, method, data,
    header: { Authorization: `Bearer ${wx.getStorageSync('token') || ''}` },
    success: (res) => (res.statusCode < 300 ? resolve(res.data) : reject(res.data)),
    fail: reject,
  }));
}

Page({
  data: { campaign: null, claimed: false, error: '' },

  onLoad(query) {
    call(`/campaigns/${encodeURIComponent(query.c || 'welcome')}`)
      .then((campaign) => this.setData({ campaign }))
      .catch(() => this.setData({ error: 'This campaign has ended.' }));
  },

  claim() {
    call(`/campaigns/${this.data.campaign.id}/claim`, 'POST')
      .then((coupon) => {
        const coupons = wx.getStorageSync('coupons') || [];
        coupons.push(coupon);
        wx.setStorageSync('coupons', coupons);
        this.setData({ claimed: true });
      })
      .catch((err) => this.setData({ error: (err && err.message) || 'Could not claim' }));
  },
});
