// Pick-up slots: every 10 minutes from 15 minutes from now until closing (21:00).
const { pad } = require('../../utils/format');

function pickupSlots(now, closing = 21) {
  const slots = [];
  const t = new Date(now.getTime() + 15 * 60000);
  t.setMinutes(Math.ceil(t.getMinutes() / 10) * 10, 0, 0);
  while (t.getHours() < closing && slots.length < 36) {
    slots.push(`${pad(t.getHours())}:${pad(t.getMinutes())}`);
    t.setMinutes(t.getMinutes() + 10);
  }
  return slots.length ? slots : ['Tomorrow 08:00'];
}

module.exports = { pickupSlots };
