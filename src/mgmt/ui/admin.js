// Admin: users, virtual hosts, permissions, policies and definitions
// export/import, one section each under #/admin/<section>.
"use strict";

const ADMIN_SECTIONS = [
  ["users", "Users"],
  ["vhosts", "Virtual hosts"],
  ["permissions", "Permissions"],
  ["policies", "Policies"],
  ["definitions", "Definitions"],
];

Views.admin = {
  tab: "admin",
  async render(root, params) {
    const section = ADMIN_SECTIONS.some(([key]) => key === params[0]) ? params[0] : "users";
    const body = h("div", { id: `admin-${section}` });
    fill(root,
      h("h2", {}, "Admin"),
      h("nav", { class: "subnav" }, ADMIN_SECTIONS.map(([key, title]) =>
        h("a", { href: `#/admin/${key}`, class: key === section ? "active" : null }, title))),
      body);
    return AdminSections[section](body);
  },
};

const AdminSections = {
  async users(root) {
    const list = h("div", { id: "user-list" });
    const add = form({ id: "user-add", class: "card grid" }, [
      field("Username", h("input", { name: "name", required: true })),
      field("Password", h("input", { name: "password", type: "password", autocomplete: "new-password" })),
      field("Tags", h("input", { name: "tags", placeholder: "administrator, management, monitoring, policymaker" })),
    ], "Add user", async (f) => {
      const name = f.elements.name.value;
      await Api.put(`/users/${enc(name)}`, { password: f.elements.password.value, tags: f.elements.tags.value });
      flash(`User '${name}' saved.`);
      f.reset();
      await refresh();
    });
    const refresh = async () => {
      const users = await Api.get("/users");
      fill(list, table([
        ["Name", (u) => u.name, "name"],
        ["Tags", (u) => (Array.isArray(u.tags) ? u.tags.join(", ") : u.tags || "")],
        ["Can log in with password", (u) => (u.password_hash ? "yes" : "no")],
        ["", (u) => dangerButton("Delete", `Delete user '${u.name}'?`, async () => {
          await Api.del(`/users/${enc(u.name)}`);
          flash(`User '${u.name}' deleted.`);
          await refresh();
        })],
      ], users, (u) => u.name));
    };
    fill(root, list, h("h3", {}, "Add or update a user"), add);
    return refresh;
  },

  async vhosts(root) {
    const list = h("div", { id: "vhost-list" });
    const add = form({ id: "vhost-add", class: "card grid" }, [
      field("Name", h("input", { name: "name", required: true })),
      field("Description", h("input", { name: "description" })),
    ], "Add virtual host", async (f) => {
      const name = f.elements.name.value;
      await Api.put(`/vhosts/${enc(name)}`, { description: f.elements.description.value });
      flash(`Virtual host '${name}' added.`);
      f.reset();
      await refresh();
    });
    const refresh = async () => {
      const vhosts = await Api.get("/vhosts");
      fill(list, table([
        ["Name", (v) => v.name, "name"],
        ["Description", (v) => v.description || ""],
        ["Ready", (v) => fmtNumber(v.messages_ready), "num"],
        ["Unacked", (v) => fmtNumber(v.messages_unacknowledged), "num"],
        ["Total", (v) => fmtNumber(v.messages), "num"],
        ["", (v) => dangerButton("Delete", `Delete virtual host '${v.name}' and everything in it?`, async () => {
          await Api.del(`/vhosts/${enc(v.name)}`);
          flash(`Virtual host '${v.name}' deleted.`);
          await refresh();
        })],
      ], vhosts, (v) => v.name));
    };
    fill(root, list, h("h3", {}, "Add a virtual host"), add);
    return refresh;
  },

  async permissions(root) {
    const [users, vhosts] = await Promise.all([Api.get("/users"), Api.get("/vhosts")]);
    const list = h("div", { id: "permission-list" });
    const set = form({ id: "permission-set", class: "card grid" }, [
      field("User", h("select", { name: "user" }, users.map((u) => h("option", { value: u.name }, u.name)))),
      field("Virtual host", vhostSelect("vhost", vhosts, "/")),
      field("Configure regexp", h("input", { name: "configure", value: ".*" })),
      field("Write regexp", h("input", { name: "write", value: ".*" })),
      field("Read regexp", h("input", { name: "read", value: ".*" })),
    ], "Set permission", async (f) => {
      const e = f.elements;
      await Api.put(`/permissions/${enc(e.vhost.value)}/${enc(e.user.value)}`, {
        configure: e.configure.value, write: e.write.value, read: e.read.value,
      });
      flash(`Permissions of '${e.user.value}' in '${e.vhost.value}' set.`);
      await refresh();
    });
    const refresh = async () => {
      const perms = await Api.get("/permissions");
      fill(list, table([
        ["User", (p) => p.user],
        ["Virtual host", (p) => p.vhost],
        ["Configure", (p) => p.configure, "code"],
        ["Write", (p) => p.write, "code"],
        ["Read", (p) => p.read, "code"],
        ["", (p) => dangerButton("Clear", `Clear permissions of '${p.user}' in '${p.vhost}'?`, async () => {
          await Api.del(`/permissions/${enc(p.vhost)}/${enc(p.user)}`);
          flash("Permissions cleared.");
          await refresh();
        })],
      ], perms, (p) => `${p.vhost}|${p.user}`));
    };
    fill(root, list, h("h3", {}, "Set permissions"), set);
    return refresh;
  },

  async policies(root) {
    const vhosts = await Api.get("/vhosts");
    const list = h("div", { id: "policy-list" });
    const set = form({ id: "policy-set", class: "card grid" }, [
      field("Virtual host", vhostSelect("vhost", vhosts, "/")),
      field("Name", h("input", { name: "name", required: true })),
      field("Pattern", h("input", { name: "pattern", required: true, placeholder: "^orders\\." })),
      field("Apply to", h("select", { name: "apply_to" },
        h("option", { value: "queues" }, "Queues"),
        h("option", { value: "exchanges" }, "Exchanges"),
        h("option", { value: "all" }, "Exchanges and queues"))),
      field("Priority", h("input", { name: "priority", type: "number", value: 0 })),
      field("Definition (JSON)", h("textarea", { name: "definition", rows: 2, required: true, placeholder: '{"max-length": 1000}' })),
    ], "Set policy", async (f) => {
      const e = f.elements;
      await Api.put(`/policies/${enc(e.vhost.value)}/${enc(e.name.value)}`, {
        pattern: e.pattern.value,
        "apply-to": e.apply_to.value,
        priority: Number(e.priority.value),
        definition: parseJsonObject(e.definition.value, "Definition"),
      });
      flash(`Policy '${e.name.value}' set.`);
      await refresh();
    });
    const refresh = async () => {
      const policies = await Api.get("/policies");
      fill(list, table([
        ["Virtual host", (p) => p.vhost],
        ["Name", (p) => p.name, "name"],
        ["Pattern", (p) => p.pattern, "code"],
        ["Apply to", (p) => p["apply-to"]],
        ["Definition", (p) => fmtJson(p.definition), "code"],
        ["Priority", (p) => p.priority, "num"],
        ["", (p) => dangerButton("Delete", `Delete policy '${p.name}'?`, async () => {
          await Api.del(`/policies/${enc(p.vhost)}/${enc(p.name)}`);
          flash(`Policy '${p.name}' deleted.`);
          await refresh();
        })],
      ], policies, (p) => `${p.vhost}|${p.name}`));
    };
    fill(root, list, h("h3", {}, "Add or update a policy"), set);
    return refresh;
  },

  async definitions(root) {
    const download = h("button", {
      type: "button",
      id: "definitions-export",
      onclick: async () => {
        try {
          const defs = await Api.get("/definitions");
          const blob = new Blob([JSON.stringify(defs, null, 2)], { type: "application/json" });
          const link = h("a", { href: URL.createObjectURL(blob), download: "broker-definitions.json" });
          document.body.append(link);
          link.click();
          link.remove();
          setTimeout(() => URL.revokeObjectURL(link.href), 10000);
        } catch (e) {
          flash(e.message, true);
        }
      },
    }, "Download broker definitions");
    const upload = form({ id: "definitions-import", class: "card grid" }, [
      field("Definitions file", h("input", { name: "file", type: "file", accept: ".json,application/json", required: true })),
    ], "Upload broker definitions", async (f) => {
      const file = f.elements.file.files[0];
      if (!file) throw new Error("Choose a definitions file first.");
      // Sent as it is: the API validates it and answers with its reason.
      await Api.post("/definitions", await file.text());
      flash(`Definitions from ${file.name} imported.`);
    });
    fill(root,
      h("h3", {}, "Export"),
      h("p", { class: "muted" }, "Users (with password hashes), virtual hosts, permissions, policies, exchanges, queues and bindings, as a RabbitMQ definitions file."),
      download,
      h("h3", {}, "Import"),
      h("p", { class: "muted" }, "A definitions file exported from this broker or from RabbitMQ; existing objects are kept."),
      upload);
    return null;
  },
};
