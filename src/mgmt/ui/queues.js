// Queues: the list with a declare form, and a page per queue with its
// bindings, publish, get, browse, purge and delete.
"use strict";

// Link to a queue's page (the hash holds URL-encoded segments).
function queueHref(vhost, name) {
  return `#/queues/${enc(vhost)}/${enc(name)}`;
}

// Short feature flags as RabbitMQ's UI shows them (D = durable, ...).
function queueFeatures(q) {
  const flags = [];
  if (q.durable) flags.push("D");
  if (q.auto_delete) flags.push("AD");
  if (q.exclusive) flags.push("Excl");
  for (const key of Object.keys(q.arguments || {})) {
    if (key !== "x-queue-type") flags.push(key.replace(/^x-/, ""));
  }
  if (q.policy) flags.push(`policy: ${q.policy}`);
  return flags.map((f) => h("span", { class: "tag" }, f));
}

Views.queues = {
  tab: "queues",
  async render(root, params) {
    if (params.length >= 2) return renderQueuePage(root, params[0], params[1]);
    const vhosts = await Api.get("/vhosts");
    const filter = h("input", { type: "search", placeholder: "Filter by name", id: "queue-filter" });
    const list = h("div", { id: "queue-list" });
    let rows = [];
    const show = () => {
      const needle = filter.value.trim().toLowerCase();
      const shown = rows.filter((q) => !needle || q.name.toLowerCase().includes(needle));
      const m = (q) => q.message_stats || {};
      fill(list, table([
        ["Virtual host", (q) => q.vhost],
        ["Name", (q) => h("a", { href: queueHref(q.vhost, q.name) }, q.name), "name"],
        ["Type", (q) => q.type],
        ["Features", queueFeatures],
        ["State", (q) => q.state],
        ["Ready", (q) => fmtNumber(q.messages_ready), "num ready"],
        ["Unacked", (q) => fmtNumber(q.messages_unacknowledged), "num unacked"],
        ["Total", (q) => fmtNumber(q.messages), "num total"],
        ["Incoming", (q) => fmtRate(m(q).publish_details), "num"],
        ["Deliver / get", (q) => fmtRate(m(q).deliver_get_details), "num"],
        ["Ack", (q) => fmtRate(m(q).ack_details), "num"],
      ], shown, (q) => `${q.vhost}|${q.name}`));
    };
    filter.addEventListener("input", show);

    const declare = form({ id: "queue-declare", class: "card grid" }, [
      field("Virtual host", vhostSelect("vhost", vhosts, "/")),
      field("Name", h("input", { name: "name", required: true })),
      field("Type", h("select", { name: "type" },
        h("option", { value: "classic" }, "Classic"),
        h("option", { value: "quorum" }, "Quorum"),
        h("option", { value: "stream" }, "Stream"))),
      field("Durability", h("select", { name: "durable" },
        h("option", { value: "true" }, "Durable"),
        h("option", { value: "false" }, "Transient"))),
      field("Auto delete", h("input", { type: "checkbox", name: "auto_delete" })),
      field("Arguments (JSON)", h("textarea", { name: "arguments", rows: 2, placeholder: '{"x-max-length": 1000}' })),
    ], "Add queue", async (f) => {
      const name = f.elements.name.value;
      const args = parseJsonObject(f.elements.arguments.value, "Arguments");
      args["x-queue-type"] = f.elements.type.value;
      await Api.put(`/queues/${enc(f.elements.vhost.value)}/${enc(name)}`, {
        durable: f.elements.durable.value === "true",
        auto_delete: f.elements.auto_delete.checked,
        arguments: args,
      });
      flash(`Queue '${name}' declared.`);
      f.elements.name.value = "";
      await refresh();
    });

    fill(root, h("h2", {}, "Queues"), filter, list,
      h("h3", {}, "Add a new queue"), declare);
    const refresh = async () => {
      rows = await Api.get("/queues");
      show();
    };
    return refresh;
  },
};

// One queue: details, then forms for what can be done with it.
async function renderQueuePage(root, vhost, name) {
  const path = `/queues/${enc(vhost)}/${enc(name)}`;
  const summary = h("div", { id: "queue-summary" });
  const bindings = h("div", { id: "queue-bindings" });
  const messages = h("div", { id: "queue-messages", class: "messages" });

  const addBinding = form({ id: "queue-bind", class: "card grid" }, [
    field("From exchange", h("input", { name: "source", required: true })),
    field("Routing key", h("input", { name: "routing_key" })),
    field("Arguments (JSON)", h("textarea", { name: "arguments", rows: 1 })),
  ], "Bind", async (f) => {
    await Api.post(`/bindings/${enc(vhost)}/e/${enc(f.elements.source.value)}/q/${enc(name)}`, {
      routing_key: f.elements.routing_key.value,
      arguments: parseJsonObject(f.elements.arguments.value, "Arguments"),
    });
    flash("Binding added.");
    await refresh();
  });

  const publish = publishForm("queue-publish", vhost, "amq.default", name, refresh);

  const getForm = form({ id: "queue-get", class: "card grid" }, [
    field("Ack mode", h("select", { name: "ackmode" },
      h("option", { value: "ack_requeue_true" }, "Nack message, requeue true"),
      h("option", { value: "ack_requeue_false" }, "Automatic ack"),
      h("option", { value: "reject_requeue_true" }, "Reject, requeue true"),
      h("option", { value: "reject_requeue_false" }, "Reject, requeue false"))),
    encodingField(),
    field("Messages", h("input", { name: "count", type: "number", min: 1, value: 1 })),
    field("Truncate (bytes)", h("input", { name: "truncate", type: "number", min: 1, value: 50000 })),
  ], "Get messages", async (f) => {
    const got = await Api.post(`${path}/get`, {
      ackmode: f.elements.ackmode.value,
      encoding: f.elements.encoding.value,
      count: Number(f.elements.count.value),
      truncate: Number(f.elements.truncate.value),
    });
    showMessages(messages, got, "get");
    await refresh();
  });

  // Browse peeks: nothing is consumed, acknowledged or requeued.
  const browse = form({ id: "queue-browse", class: "card grid" }, [
    field("Messages", h("input", { name: "count", type: "number", min: 1, value: 10 })),
    field("From offset", h("input", { name: "offset", type: "number", min: 0, value: 0 })),
    encodingField(),
    field("Truncate (bytes)", h("input", { name: "truncate", type: "number", min: 1, value: 50000 })),
  ], "Browse", async (f) => {
    const got = await Api.post(`${path}/browse`, {
      count: Number(f.elements.count.value),
      offset: Number(f.elements.offset.value),
      encoding: f.elements.encoding.value,
      truncate: Number(f.elements.truncate.value),
    });
    showMessages(messages, got, "browse");
  });

  const actions = h("div", { class: "actions" },
    dangerButton("Purge messages", `Purge all messages of queue '${name}'?`, async () => {
      await Api.del(`${path}/contents`);
      flash(`Queue '${name}' purged.`);
      await refresh();
    }, { id: "queue-purge" }),
    dangerButton("Delete queue", `Delete queue '${name}'?`, async () => {
      await Api.del(path);
      flash(`Queue '${name}' deleted.`);
      location.hash = "#/queues";
    }, { id: "queue-delete" }));

  fill(root,
    h("h2", {}, "Queue ", h("span", { class: "object-name" }, name), h("span", { class: "muted" }, ` in ${vhost}`)),
    summary,
    h("h3", {}, "Bindings"), bindings, addBinding,
    h("h3", {}, "Publish message"), publish,
    h("h3", {}, "Get messages"), h("p", { class: "muted" }, "Get consumes messages (and may requeue them)."), getForm,
    h("h3", {}, "Browse messages"), h("p", { class: "muted" }, "Browse shows messages without consuming them."), browse,
    messages,
    h("h3", {}, "Purge and delete"), actions);

  async function refresh() {
    const [q, bound] = await Promise.all([Api.get(path), Api.get(`${path}/bindings`)]);
    const m = q.message_stats || {};
    fill(summary, h("div", { class: "card summary" }, h("dl", {}, [
      ["Type", q.type], ["State", q.state], ["Durable", String(q.durable)],
      ["Auto delete", String(q.auto_delete)], ["Exclusive", String(q.exclusive)],
      ["Arguments", fmtJson(q.arguments)], ["Policy", q.policy || ""],
      ["Consumers", fmtNumber(q.consumers)],
      ["Ready", fmtNumber(q.messages_ready)], ["Unacked", fmtNumber(q.messages_unacknowledged)],
      ["Total", fmtNumber(q.messages)],
      ["Incoming", fmtRate(m.publish_details)], ["Deliver / get", fmtRate(m.deliver_get_details)],
      ["Ack", fmtRate(m.ack_details)],
    ].map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))));
    fill(bindings, table([
      ["From", (b) => b.source || "(default exchange)"],
      ["Routing key", (b) => b.routing_key],
      ["Arguments", (b) => fmtJson(b.arguments)],
      ["", (b) => b.source ? dangerButton("Unbind", null, async () => {
        await Api.del(`/bindings/${enc(vhost)}/e/${enc(b.source)}/q/${enc(name)}/${enc(b.properties_key)}`);
        flash("Binding removed.");
        await refresh();
      }) : ""],
    ], bound));
  }
  return refresh;
}

function encodingField() {
  return field("Encoding", h("select", { name: "encoding" },
    h("option", { value: "auto" }, "Auto string / base64"),
    h("option", { value: "base64" }, "base64")));
}

// The publish form of a queue (through the default exchange, routing key
// fixed to the queue) or of an exchange (routing key typed in).
function publishForm(id, vhost, exchange, fixedRoutingKey, after) {
  return form({ id, class: "card grid" }, [
    fixedRoutingKey === null
      ? field("Routing key", h("input", { name: "routing_key" }))
      : null,
    field("Delivery mode", h("select", { name: "delivery_mode" },
      h("option", { value: "1" }, "1 - Non-persistent"),
      h("option", { value: "2" }, "2 - Persistent"))),
    field("Headers (JSON)", h("textarea", { name: "headers", rows: 1, placeholder: '{"key": "value"}' })),
    field("Properties (JSON)", h("textarea", { name: "properties", rows: 1, placeholder: '{"content_type": "text/plain"}' })),
    field("Payload", h("textarea", { name: "payload", rows: 3 })),
  ], "Publish message", async (f) => {
    const properties = parseJsonObject(f.elements.properties.value, "Properties");
    properties.delivery_mode = Number(f.elements.delivery_mode.value);
    const headers = parseJsonObject(f.elements.headers.value, "Headers");
    if (Object.keys(headers).length) properties.headers = headers;
    const routingKey = fixedRoutingKey === null ? f.elements.routing_key.value : fixedRoutingKey;
    const result = await Api.post(`/exchanges/${enc(vhost)}/${enc(exchange)}/publish`, {
      properties,
      routing_key: routingKey,
      payload: f.elements.payload.value,
      payload_encoding: "string",
    });
    flash(result && result.routed ? "Message published." : "Message published, but not routed.", !(result && result.routed));
    if (after) await after();
  });
}

// Messages from get or browse, as cards.
function showMessages(container, list, how) {
  if (!Array.isArray(list) || !list.length) {
    fill(container, h("p", { class: "muted", "data-how": how }, "Queue is empty."));
    return;
  }
  const what = how === "get" ? "Got" : "Browsed";
  fill(container, h("h3", {}, `${what} ${list.length} message${list.length === 1 ? "" : "s"}`),
    list.map((msg, i) => h("div", { class: "card message", "data-how": how },
    h("h4", {}, `Message ${i + 1}`),
    how === "get" ? h("p", { class: "muted" }, `The server reported ${msg.message_count} messages remaining.`) : null,
    h("dl", {},
      h("dt", {}, "Exchange"), h("dd", {}, msg.exchange || "(default)"),
      h("dt", {}, "Routing key"), h("dd", {}, msg.routing_key),
      h("dt", {}, "Redelivered"), h("dd", {}, String(msg.redelivered)),
      h("dt", {}, "Properties"), h("dd", {}, fmtJson(msg.properties)),
      h("dt", {}, "Payload"), h("dd", {}, `${msg.payload_bytes === undefined ? "" : `${msg.payload_bytes} bytes, `}encoding: ${msg.payload_encoding}`)),
    h("pre", { class: "payload" }, msg.payload))));
  container.scrollIntoView({ block: "start", behavior: "smooth" });
}
