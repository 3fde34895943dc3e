// The HTTP API client: every call goes to /api/... with the logged-in
// user's credentials as HTTP basic auth. The credentials live in
// sessionStorage, so they last as long as the browser tab.
"use strict";

const Api = (() => {
  const KEY = "broker.auth";

  // base64 of "user:pass" as UTF-8 (btoa alone fails beyond Latin-1).
  function basic(user, pass) {
    const bytes = new TextEncoder().encode(`${user}:${pass}`);
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary);
  }

  // Shown as "status: reason", e.g. a refused permission reads
  // "403: access to queue 'q' in vhost '/' refused for user 'u'".
  class ApiError extends Error {
    constructor(status, body) {
      let reason = body && (body.reason || body.error);
      // RabbitMQ sometimes sends a structured reason; show it as JSON.
      if (reason && typeof reason !== "string") reason = JSON.stringify(reason);
      super(reason ? `${status}: ${reason}` : `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  // Sends a request; resolves to the parsed JSON (or null when empty),
  // rejects with an ApiError carrying RabbitMQ's {error, reason}.
  async function request(method, path, body, auth, extraHeaders) {
    const headers = { Authorization: `Basic ${auth}`, ...extraHeaders };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(`api${path}`, init);
    } catch (e) {
      throw new Error(`The broker did not answer (${e.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = { reason: text };
      }
    }
    if (!response.ok) {
      // 401 also answers "not allowed" (a monitoring user changing
      // something); only a failed login means the credentials are gone.
      const loginFailed = !data || data.reason === "Login failed";
      if (response.status === 401 && loginFailed && path !== "/whoami") Api.onUnauthorized();
      throw new ApiError(response.status, data);
    }
    return data;
  }

  return {
    ApiError,
    // Replaced by the app: what to do when the stored login stops working.
    onUnauthorized() {},

    loggedIn() {
      return sessionStorage.getItem(KEY) !== null;
    },

    // Checks the credentials with /api/whoami; keeps them only if they work.
    async login(user, pass) {
      const auth = basic(user, pass);
      const me = await request("GET", "/whoami", undefined, auth);
      sessionStorage.setItem(KEY, auth);
      return me;
    },

    logout() {
      sessionStorage.removeItem(KEY);
    },

    call(method, path, body, headers) {
      return request(method, path, body, sessionStorage.getItem(KEY) || "", headers);
    },
    get(path) { return this.call("GET", path); },
    put(path, body) { return this.call("PUT", path, body === undefined ? {} : body); },
    post(path, body) { return this.call("POST", path, body === undefined ? {} : body); },
    del(path, headers) { return this.call("DELETE", path, undefined, headers); },
  };
})();

// One path segment: vhost "/" becomes "%2F", as the API expects.
function enc(segment) {
  return encodeURIComponent(segment);
}
