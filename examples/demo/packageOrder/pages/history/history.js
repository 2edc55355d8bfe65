const { request } = require('../../../utils/request');
const { formatDate, formatPrice } = require('../../../utils/format');

Page({
  data: { orders: [], page: 0, done: false },

  onLoad() { this.more(); },
  onReachBottom() { this.more(); },

  more() {
    if (this.data.done || this.loading) return;
    this.loading = true;
    request({ path: '/orders', query: { page: this.data.page, size: 20 } })
      .then((list) => {
        const orders = list.map((o) => ({ ...o, when: formatDate(o.createdAt, true), totalText: formatPrice(o.total) }));
        this.setData({ orders: this.data.orders.concat(orders), page: this.data.page + 1, done: list.length < 20 });
      })
      .finally(() => { this.loading = false; });
  },
});
