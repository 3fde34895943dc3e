// Exchanges: the list with a declare form, and a page per exchange with
// its bindings (from and to it), binding forms, publish and delete.
"use strict";

// The default exchange is "" in listings and "amq.default" in paths.
function exchangePathName(name) {
  return name === "" ? "amq.default" : name;
}

function exchangeHref(vhost, name) {
  return `#/exchanges/${enc(vhost)}/${enc(exchangePathName(name))}`;
}

// Unbinds `b` (a binding object from the API), then runs `after`.
async function deleteBinding(b, after) {
  const kind = b.destination_type === "exchange" ? "e" : "q";
  await Api.del(`/bindings/${enc(b.vhost)}/e/${enc(b.source)}/${kind}/${enc(b.destination)}/${enc(b.properties_key)}`);
  flash("Binding removed.");
  await after();
}

Views.exchanges = {
  tab: "exchanges",
  async render(root, params) {
    if (params.length >= 2) return renderExchangePage(root, params[0], params[1]);
    const [vhosts, overview] = await Promise.all([Api.get("/vhosts"), Api.get("/overview")]);
    const types = (overview.exchange_types || []).map((t) => t.name);
    const list = h("div", { id: "exchange-list" });

    const declare = form({ id: "exchange-declare", class: "card grid" }, [
      field("Virtual host", vhostSelect("vhost", vhosts, "/")),
      field("Name", h("input", { name: "name", required: true })),
      field("Type", h("select", { name: "type" }, types.map((t) => h("option", { value: t }, t)))),
      field("Durability", h("select", { name: "durable" },
        h("option", { value: "true" }, "Durable"),
        h("option", { value: "false" }, "Transient"))),
      field("Auto delete", h("input", { type: "checkbox", name: "auto_delete" })),
      field("Internal", h("input", { type: "checkbox", name: "internal" })),
      field("Arguments (JSON)", h("textarea", { name: "arguments", rows: 2, placeholder: '{"alternate-exchange": "ae"}' })),
    ], "Add exchange", async (f) => {
      const name = f.elements.name.value;
      await Api.put(`/exchanges/${enc(f.elements.vhost.value)}/${enc(name)}`, {
        type: f.elements.type.value,
        durable: f.elements.durable.value === "true",
        auto_delete: f.elements.auto_delete.checked,
        internal: f.elements.internal.checked,
        arguments: parseJsonObject(f.elements.arguments.value, "Arguments"),
      });
      flash(`Exchange '${name}' declared.`);
      f.elements.name.value = "";
      await refresh();
    });

    fill(root, h("h2", {}, "Exchanges"), list, h("h3", {}, "Add a new exchange"), declare);
    const refresh = async () => {
      const rows = await Api.get("/exchanges");
      fill(list, table([
        ["Virtual host", (e) => e.vhost],
        ["Name", (e) => h("a", { href: exchangeHref(e.vhost, e.name) }, e.name || "(AMQP default)"), "name"],
        ["Type", (e) => e.type],
        ["Features", (e) => [
          e.durable ? "D" : null, e.auto_delete ? "AD" : null, e.internal ? "I" : null,
          ...Object.keys(e.arguments || {}),
        ].filter(Boolean).map((f) => h("span", { class: "tag" }, f))],
        ["Policy", (e) => e.policy || ""],
        ["Rate in", (e) => fmtRate((e.message_stats || {}).publish_in_details), "num"],
        ["Rate out", (e) => fmtRate((e.message_stats || {}).publish_out_details), "num"],
      ], rows, (e) => `${e.vhost}|${e.name}`));
    };
    return refresh;
  },
};

async function renderExchangePage(root, vhost, name) {
  const path = `/exchanges/${enc(vhost)}/${enc(name)}`;
  const summary = h("div", { id: "exchange-summary" });
  const outgoing = h("div", { id: "exchange-bindings-source" });
  const incoming = h("div", { id: "exchange-bindings-destination" });

  const bind = form({ id: "exchange-bind", class: "card grid" }, [
    field("To", h("select", { name: "kind" },
      h("option", { value: "q" }, "Queue"),
      h("option", { value: "e" }, "Exchange"))),
    field("Name", h("input", { name: "destination", required: true })),
    field("Routing key", h("input", { name: "routing_key" })),
    field("Arguments (JSON)", h("textarea", { name: "arguments", rows: 1 })),
  ], "Bind", async (f) => {
    await Api.post(`/bindings/${enc(vhost)}/e/${enc(name)}/${f.elements.kind.value}/${enc(f.elements.destination.value)}`, {
      routing_key: f.elements.routing_key.value,
      arguments: parseJsonObject(f.elements.arguments.value, "Arguments"),
    });
    flash("Binding added.");
    await refresh();
  });

  const bindingColumns = (other) => [
    [other === "destination" ? "To" : "From", (b) => b[other] || "(default exchange)"],
    ["Kind", (b) => (other === "destination" ? b.destination_type : "exchange")],
    ["Routing key", (b) => b.routing_key],
    ["Arguments", (b) => fmtJson(b.arguments)],
    ["", (b) => dangerButton("Unbind", null, () => deleteBinding(b, refresh))],
  ];

  fill(root,
    h("h2", {}, "Exchange ", h("span", { class: "object-name" }, name), h("span", { class: "muted" }, ` in ${vhost}`)),
    summary,
    h("h3", {}, "Bindings from this exchange"), outgoing, bind,
    h("h3", {}, "Bindings to this exchange"), incoming,
    h("h3", {}, "Publish message"), publishForm("exchange-publish", vhost, name, null, null),
    h("h3", {}, "Delete"),
    h("div", { class: "actions" }, dangerButton("Delete exchange", `Delete exchange '${name}'?`, async () => {
      await Api.del(path);
      flash(`Exchange '${name}' deleted.`);
      location.hash = "#/exchanges";
    }, { id: "exchange-delete" })));

  async function refresh() {
    const [e, from, to] = await Promise.all([
      Api.get(path), Api.get(`${path}/bindings/source`), Api.get(`${path}/bindings/destination`),
    ]);
    fill(summary, h("div", { class: "card summary" }, h("dl", {}, [
      ["Type", e.type], ["Durable", String(e.durable)], ["Auto delete", String(e.auto_delete)],
      ["Internal", String(e.internal)], ["Arguments", fmtJson(e.arguments)], ["Policy", e.policy || ""],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));
    fill(outgoing, table(bindingColumns("destination"), from));
    fill(incoming, table(bindingColumns("source"), to));
  }
  return refresh;
}
