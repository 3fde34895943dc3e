// The application: login, tabs (hash routes such as #/queues/%2F/orders)
// and the refresh loop of the current view.
"use strict";

const REFRESH_MS = 5000;

const App = {
  // Bumped on every route change, so that a slow render or refresh of a
  // view the user has left does not draw over the new one.
  generation: 0,
  timer: null,

  start() {
    document.getElementById("login-form").addEventListener("submit", (e) => {
      e.preventDefault();
      this.login();
    });
    document.getElementById("logout").addEventListener("click", () => {
      Api.logout();
      this.showLogin("");
    });
    Api.onUnauthorized = () => {
      Api.logout();
      this.showLogin("Your login is no longer valid; please log in again.");
    };
    window.addEventListener("hashchange", () => this.route());
    if (Api.loggedIn()) this.showApp();
    else this.showLogin("");
  },

  async login() {
    const user = document.getElementById("login-username").value;
    const pass = document.getElementById("login-password").value;
    const error = document.getElementById("login-error");
    error.textContent = "";
    try {
      await Api.login(user, pass);
      this.showApp();
    } catch (e) {
      error.textContent = e.message;
    }
  },

  showLogin(message) {
    this.stopRefresh();
    document.getElementById("app").hidden = true;
    document.getElementById("login").hidden = false;
    document.getElementById("login-error").textContent = message;
    document.getElementById("login-username").focus();
  },

  async showApp() {
    document.getElementById("login").hidden = true;
    document.getElementById("app").hidden = false;
    try {
      const me = await Api.get("/whoami");
      document.getElementById("whoami").textContent = `${me.name} (${[].concat(me.tags || []).join(", ")})`;
    } catch (e) {
      // Stored credentials that no longer work (e.g. a changed password).
      Api.logout();
      this.showLogin(e.message);
      return;
    }
    this.route();
  },

  stopRefresh() {
    this.generation += 1;
    clearInterval(this.timer);
    this.timer = null;
  },

  // "#/queues/%2F/q" -> ["queues", "/", "q"]
  routeSegments() {
    const raw = location.hash.replace(/^#\/?/, "");
    return raw ? raw.split("/").map((s) => {
      try {
        return decodeURIComponent(s);
      } catch (e) {
        return s;
      }
    }) : [];
  },

  async route() {
    if (!Api.loggedIn()) return;
    this.stopRefresh();
    const generation = this.generation;
    const [name, ...params] = this.routeSegments();
    const view = Views[name] || Views.overview;
    for (const link of document.querySelectorAll("#tabs a")) {
      link.classList.toggle("active", link.dataset.tab === view.tab);
    }
    const root = document.getElementById("view");
    root.dataset.view = view.tab;
    let refresh;
    try {
      refresh = await view.render(root, params);
    } catch (e) {
      if (generation === this.generation) fill(root, h("p", { class: "error" }, e.message));
      return;
    }
    if (generation !== this.generation || !refresh) return;
    const tick = async () => {
      if (generation !== this.generation || document.hidden) return;
      try {
        await refresh();
        root.dataset.refreshed = String(Date.now());
      } catch (e) {
        if (generation === this.generation) flash(e.message, true);
      }
    };
    await tick();
    if (generation === this.generation) this.timer = setInterval(tick, REFRESH_MS);
  },
};

App.start();
