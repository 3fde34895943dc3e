// Connections (with close) and channels.
"use strict";

function clientName(c) {
  const p = c.client_properties || {};
  return [p.product, p.version].filter(Boolean).join(" ") || "";
}

Views.connections = {
  tab: "connections",
  render(root) {
    const list = h("div", { id: "connection-list" });
    fill(root, h("h2", {}, "Connections"), list);
    const refresh = async () => {
      const rows = await Api.get("/connections");
      fill(list, table([
        ["Name", (c) => c.name, "name"],
        ["Virtual host", (c) => c.vhost],
        ["User", (c) => c.user],
        ["State", (c) => c.state],
        ["Client", clientName],
        ["Protocol", (c) => c.protocol],
        ["TLS", (c) => (c.ssl ? "yes" : "")],
        ["Channels", (c) => fmtNumber(c.channels), "num"],
        ["From client", (c) => (c.recv_oct_details ? `${Math.round(c.recv_oct_details.rate)} B/s` : ""), "num"],
        ["To client", (c) => (c.send_oct_details ? `${Math.round(c.send_oct_details.rate)} B/s` : ""), "num"],
        ["", (c) => dangerButton("Close", `Close connection ${c.name}?`, async () => {
          // RabbitMQ takes the close reason from this header.
          await Api.del(`/connections/${enc(c.name)}`, { "X-Reason": "Closed via management UI" });
          flash(`Connection ${c.name} closed.`);
          await refresh();
        })],
      ], rows, (c) => c.name));
    };
    return refresh;
  },
};

Views.channels = {
  tab: "channels",
  render(root) {
    const list = h("div", { id: "channel-list" });
    fill(root, h("h2", {}, "Channels"), list);
    return async () => {
      const rows = await Api.get("/channels");
      fill(list, table([
        ["Channel", (c) => c.name, "name"],
        ["Virtual host", (c) => c.vhost],
        ["User", (c) => c.user],
        ["Mode", (c) => [c.confirm ? "C" : null, c.transactional ? "T" : null].filter(Boolean).join(" ")],
        ["State", (c) => c.state],
        ["Consumers", (c) => fmtNumber(c.consumer_count), "num"],
        ["Prefetch", (c) => fmtNumber(c.prefetch_count), "num"],
        ["Unacked", (c) => fmtNumber(c.messages_unacknowledged), "num"],
        ["Publish", (c) => fmtRate((c.message_stats || {}).publish_details), "num"],
        ["Deliver / get", (c) => fmtRate((c.message_stats || {}).deliver_get_details), "num"],
        ["Ack", (c) => fmtRate((c.message_stats || {}).ack_details), "num"],
      ], rows, (c) => c.name));
    };
  },
};
