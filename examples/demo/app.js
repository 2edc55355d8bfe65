// Harbour Coffee: app entry. Holds the session, the cart and the store the user picked.
const { request } = require('./utils/request');
const { loadCart, saveCart } = require('./utils/cart');

App({
  globalData: {
    user: null,
    store: null,
    cart: [],
    apiBase: 'https://api.harbour-coffee.example/v2',
  },

  onLaunch(options) {
    this.globalData.cart = loadCart();
    const store = wx.getStorageSync('store');
    if (store) this.globalData.store = store;
    if (options && options.query && options.query.store) {
      this.pickStore(options.query.store);
    }
    this.login();
  },

  onShow() {
    const updater = wx.getUpdateManager && wx.getUpdateManager();
    if (!updater) return;
    updater.onUpdateReady(() => {
      wx.showModal({
        title: 'A new version is ready',
        content: 'Restart now to use it?',
        success: (res) => { if (res.confirm) updater.applyUpdate(); },
      });
    });
  },

  login() {
    return new Promise((resolve, reject) => {
      wx.login({
        success: ({ code }) => request({ path: '/session', method: 'POST', data: { code } })
          .then((session) => {
            this.globalData.user = session.user;
            wx.setStorageSync('token', session.token);
            resolve(session.user);
          })
          .catch(reject),
        fail: reject,
      });
    });
  },

  pickStore(id) {
    return request({ path: `/stores/${encodeURIComponent(id)}` }).then((store) => {
      this.globalData.store = store;
      wx.setStorageSync('store', store);
      return store;
    });
  },

  addToCart(item, options = {}) {
    const cart = this.globalData.cart;
    const key = `${item.id}:${options.size || 'M'}:${(options.extras || []).sort().join(',')}`;
    const line = cart.find((l) => l.key === key);
    if (line) line.qty += 1;
    else cart.push({ key, id: item.id, name: item.name, price: item.price, qty: 1, ...options });
    saveCart(cart);
    return cart;
  },
});
