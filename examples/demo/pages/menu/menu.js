const fallback = require('../../data/menu');
const { request } = require('../../utils/request');
const { formatPrice, truncate } = require('../../utils/format');
const { count } = require('../../utils/cart');

Page({
  data: { categories: ['drinks', 'food'], active: 'drinks', items: [], cartCount: 0 },

  onLoad() {
    this.show(fallback.items);
    request({ path: '/menu' }).then((menu) => this.show(menu.items)).catch(() => {});
  },

  onShow() {
    this.setData({ cartCount: count(getApp().globalData.cart) });
  },

  show(items) {
    this.allItems = items;
    this.filter(this.data.active);
  },

  filter(category) {
    const items = (this.allItems || [])
      .filter((i) => i.category === category)
      .map((i) => ({ ...i, priceText: formatPrice(i.price), blurb: truncate(i.description, 48) }));
    this.setData({ active: category, items });
  },

  onTab(e) { this.filter(e.currentTarget.dataset.category); },

  onAdd(e) {
    const item = this.allItems.find((i) => i.id === e.currentTarget.dataset.id);
    const cart = getApp().addToCart(item, { size: 'M' });
    this.setData({ cartCount: count(cart) });
    wx.showToast({ title: 'Added', icon: 'success', duration: 800 });
  },

  goCart() { wx.navigateTo({ url: '/pages/cart/cart' }); },
});
