// Streams: the stream queues (type "stream" in /api/queues) and the
// consumer groups of partitioned streams (/api/consumer-groups): per group
// its members, and per partition the owner, the committed offset and the
// lag (messages after the committed offset).
"use strict";

Views.streams = {
  tab: "streams",
  render(root) {
    const streams = h("div", { id: "stream-list" });
    const groups = h("div", { id: "group-list" });
    fill(root, h("h2", {}, "Streams"),
      h("h3", {}, "Stream queues"), streams,
      h("h3", {}, "Consumer groups"), groups);

    return async () => {
      const [queues, groupList] = await Promise.all([Api.get("/queues"), Api.get("/consumer-groups")]);
      const m = (q) => q.message_stats || {};
      fill(streams, table([
        ["Virtual host", (q) => q.vhost],
        ["Name", (q) => h("a", { href: queueHref(q.vhost, q.name) }, q.name), "name"],
        // A stream keeps what it has read out: "ready" is what the log
        // retains, "unacked" what consumers hold without an ack yet.
        ["Messages", (q) => fmtNumber(q.messages_ready), "num retained"],
        ["Unacked", (q) => fmtNumber(q.messages_unacknowledged), "num unacked"],
        ["Size", (q) => fmtBytes(q.message_bytes), "num bytes"],
        ["Consumers", (q) => fmtNumber(q.consumers), "num consumers"],
        ["Incoming", (q) => fmtRate(m(q).publish_details), "num"],
      ], queues.filter((q) => q.type === "stream"), (q) => `${q.vhost}|${q.name}`));

      if (!groupList.length) {
        fill(groups, h("p", { class: "muted" },
          "No consumer groups. A group appears when a consumer joins one: basic.consume on a super stream "
          + "(an x-super-stream exchange) with the argument x-consumer-group."));
        return;
      }
      fill(groups, groupList.map(groupCard));
    };
  },
};

// One consumer group: a summary, its members and its partitions.
function groupCard(g) {
  const partitions = g.partitions || [];
  const totalLag = partitions.reduce((sum, p) => sum + (typeof p.lag === "number" ? p.lag : 0), 0);
  return h("div", { class: "card group", "data-group": `${g.vhost}|${g.super_stream}|${g.name}` },
    h("h4", {}, "Group ", h("span", { class: "object-name" }, g.name),
      " on super stream ", h("span", { class: "object-name" }, g.super_stream),
      h("span", { class: "muted" }, ` in ${g.vhost}`)),
    h("div", { class: "summary" }, h("dl", {}, [
      ["Members", fmtNumber((g.members || []).length)],
      ["Partitions", fmtNumber(partitions.length)],
      ["Total lag", fmtNumber(totalLag)],
      ["Rebalances", fmtNumber(g.rebalances)],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, v)]))),
    h("h5", {}, "Partitions"),
    h("div", { class: "partitions" }, table([
      ["Partition", (p) => String(p.index), "num index"],
      ["Queue", (p) => h("a", { href: queueHref(g.vhost, p.queue) }, p.queue), "queue"],
      ["Owner", (p) => p.owner || "none", "owner"],
      ["Committed offset", (p) => (typeof p.committed_offset === "number" ? fmtNumber(p.committed_offset) : "none"), "num committed"],
      ["Lag", (p) => fmtNumber(p.lag), "num lag"],
    ], partitions, (p) => String(p.index))),
    h("h5", {}, "Members"),
    h("div", { class: "members" }, table([
      ["Consumer tag", (mb) => mb.consumer_tag, "tag-name"],
      ["Connection", (mb) => (mb.channel_details || {}).connection_name || ""],
      ["Channel", (mb) => fmtNumber((mb.channel_details || {}).number), "num"],
      ["Partitions", (mb) => ((mb.partitions || []).length ? mb.partitions.join(", ") : "none (standing by)"), "assigned"],
    ], g.members || [], (mb) => mb.consumer_tag)));
}
