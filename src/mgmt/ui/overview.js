// Overview: totals and live charts of message rates and queue depths.
"use strict";

// One minute of history in 5 s steps, as RabbitMQ's own UI asks for it.
const OVERVIEW_QUERY = "?lengths_age=60&lengths_incr=5&msg_rates_age=60&msg_rates_incr=5";

Views.overview = {
  tab: "overview",
  render(root) {
    const totals = h("div", { class: "totals", id: "totals" });
    const depths = chartBox("Queued messages (last minute)", "chart-depths", "");
    const rates = chartBox("Message rates (last minute)", "chart-rates", "/s");
    const node = h("p", { class: "muted", id: "node-info" });
    fill(root, h("h2", {}, "Overview"), node, totals, h("div", { class: "charts" }, depths.el, rates.el));

    return async () => {
      const o = await Api.get(`/overview${OVERVIEW_QUERY}`);
      const q = o.queue_totals || {};
      const objects = o.object_totals || {};
      const tile = (label, value, id) =>
        h("div", { class: "tile", id }, h("span", { class: "value" }, fmtNumber(value || 0)), h("span", { class: "label" }, label));
      fill(totals,
        tile("Ready", q.messages_ready, "total-ready"),
        tile("Unacked", q.messages_unacknowledged, "total-unacked"),
        tile("Total", q.messages, "total-messages"),
        tile("Connections", objects.connections, "total-connections"),
        tile("Channels", objects.channels, "total-channels"),
        tile("Exchanges", objects.exchanges, "total-exchanges"),
        tile("Queues", objects.queues, "total-queues"),
        tile("Consumers", objects.consumers, "total-consumers"));
      node.textContent = `${o.product_name || "Broker"} ${o.product_version || ""} on ${o.node || ""}`;

      const m = o.message_stats || {};
      depths.draw([
        seriesFromSamples("Ready", q.messages_ready_details, false),
        seriesFromSamples("Unacked", q.messages_unacknowledged_details, false),
        seriesFromSamples("Total", q.messages_details, false),
      ]);
      rates.draw([
        seriesFromSamples("Publish", m.publish_details, true),
        seriesFromSamples("Deliver / get", m.deliver_get_details, true),
        seriesFromSamples("Ack", m.ack_details, true),
      ]);
    };
  },
};
