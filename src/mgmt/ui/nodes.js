// Nodes: the cluster's nodes (/api/nodes) and this node's view of the
// cluster (/api/cluster): its state, leader, term and members. A node
// without [cluster] configuration answers state "alone" with itself as
// the only member.
"use strict";

// "yes" / "no" for a boolean, empty for anything else.
function yesNo(value) {
  return typeof value === "boolean" ? (value ? "yes" : "no") : "";
}

Views.nodes = {
  tab: "nodes",
  render(root) {
    const nodes = h("div", { id: "node-list" });
    const summary = h("div", { id: "cluster-summary" });
    const members = h("div", { id: "cluster-members" });
    fill(root, h("h2", {}, "Nodes"), nodes,
      h("h3", {}, "Cluster"), summary,
      h("h3", {}, "Members"), members);

    return async () => {
      const [list, cluster] = await Promise.all([Api.get("/nodes"), Api.get("/cluster")]);
      fill(nodes, table([
        ["Name", (n) => n.name, "name"],
        ["State", (n) => (n.running ? "running" : "not running"), "state"],
        ["Uptime", (n) => fmtDuration(n.uptime), "num uptime"],
        ["Memory", (n) => fmtBytes(n.mem_used), "num memory"],
        ["File descriptors", (n) => (typeof n.fd_used === "number"
          ? `${fmtNumber(n.fd_used)} / ${fmtNumber(n.fd_total)}` : ""), "num fds"],
        ["Partitions", (n) => ((n.partitions || []).length ? n.partitions.join(", ") : "none"), "partitions"],
      ], list, (n) => n.name));

      const alone = cluster.state === "alone";
      fill(summary,
        alone ? h("p", { class: "muted", id: "cluster-alone" },
          "This node runs alone: it has no [cluster] configuration, so it is the only member and its own leader.") : null,
        h("div", { class: "card summary" }, h("dl", {}, [
          ["Cluster name", cluster.cluster_name],
          ["This node", cluster.node],
          ["State", cluster.state],
          ["Leader", cluster.leader || "none"],
          // A node alone has no election term.
          ["Term", typeof cluster.term === "number" ? fmtNumber(cluster.term) : null],
          ["Members", fmtNumber((cluster.members || []).length)],
        ].filter(([, v]) => v !== null)
          .map(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, v)]))));

      fill(members, table([
        ["Name", (m) => [m.name,
          m.name === cluster.node ? [" ", h("span", { class: "tag" }, "this node")] : null,
          m.name === cluster.leader ? [" ", h("span", { class: "tag" }, "leader")] : null], "name"],
        ["Address", (m) => m.addr || ""],
        ["Voter", (m) => yesNo(m.voter), "voter"],
        ["Reachable", (m) => yesNo(m.reachable), "reachable"],
      ], cluster.members || [], (m) => m.name));
    };
  },
};
