// The console's shell: who is signed in, which page the address names, and sign-out.
// Pages: #/ (overview), #/adapters/<tenant>/<name>, #/tenants (admin only).

import { api, useCsrfToken } from "./api.js";
import { renderAdapter } from "./adapter.js";
import { clearNotice, showNotice } from "./notice.js";
import { renderOverview } from "./overview.js";
import { renderSignIn } from "./signin.js";
import { renderTenants } from "./tenants.js";

const main = document.getElementById("main");
let session = null;

function showSession() {
  const signedIn = session !== null;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("nav-tenants").hidden = !signedIn || session.role !== "admin";
  document.getElementById("sign-out").hidden = !signedIn;
  document.getElementById("who").textContent = signedIn
    ? `${session.actor} (${session.role === "admin" ? "admin" : `tenant ${session.tenant}, read-only`})`
    : "";
}

async function route() {
  if (session === null) return;
  const path = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  const adapter = path.match(/^\/adapters\/([^/]+\/[^/]+)$/);
  // Each visit renders into a node of its own: a slow page that finishes after the
  // operator has moved on fills a node no longer shown, never the current page.
  const page = document.createElement("div");
  main.replaceChildren(page);
  try {
    if (adapter) await renderAdapter(page, session, adapter[1]);
    else if (path === "/tenants" && session.role === "admin") await renderTenants(page);
    else await renderOverview(page, session);
  } catch (failure) {
    showNotice(failure.message, "error");
  }
}

function signedIn(current) {
  session = current;
  useCsrfToken(current.csrf_token);
  showSession();
  route();
}

function signedOut() {
  session = null;
  showSession();
  renderSignIn(main, (current) => { clearNotice(); signedIn(current); });
}

document.getElementById("sign-out").addEventListener("click", async () => {
  await api("DELETE", "/console/session").catch(() => null);
  clearNotice();
  signedOut();
});
window.addEventListener("hashchange", () => { clearNotice(); route(); });
window.addEventListener("session-ended", () => {
  if (session !== null) {
    signedOut();
    showNotice("Your session ended; sign in again.", "error");
  }
});

api("GET", "/console/session").then(signedIn, signedOut);
