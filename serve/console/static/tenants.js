// Tenants and their keys (admin only): create a tenant, issue a key (shown once), revoke.

import { api } from "./api.js";
import { confirmChange } from "./dialog.js";
import { el, fill, section, table, when } from "./dom.js";
import { showNotice } from "./notice.js";

const base = (tenant) => `/admin/v1/tenants/${encodeURIComponent(tenant)}`;

function shownOnce({ tenant, issued }) {
  return el("div", { class: "card issued", id: "issued-key" },
    el("p", {}, `The new key of ${tenant}. It is shown only now: store it before you leave ` +
      "this page."),
    el("code", {}, issued.key));
}

async function issueKey(tenant, label, rerender) {
  try {
    const issued = await api("POST", `${base(tenant)}/keys`, { label: label || null });
    await rerender({ tenant, issued });
  } catch (failure) {
    showNotice(failure.message, "error");
  }
}

async function revoke(tenant, key, rerender) {
  const answer = await confirmChange({ title: `Revoke ${key.prefix}… of ${tenant}`,
    detail: "Requests with this key fail from now on, on every server.",
    confirmLabel: "Revoke" });
  if (answer === null) return;
  try {
    await api("POST", `${base(tenant)}/keys/${encodeURIComponent(key.prefix)}/revoke`,
      { reason: answer.reason });
    await rerender();
    showNotice(`Key ${key.prefix}… of ${tenant} is revoked.`, "ok");
  } catch (failure) {
    showNotice(failure.message, "error");
  }
}

function keysTable(tenant, keys, rerender) {
  const rows = keys.map((key) => el("tr", { "data-prefix": key.prefix },
    el("td", {}, el("code", {}, `${key.prefix}…`)), el("td", {}, key.label || ""),
    el("td", {}, `${when(key.created_at)} by ${key.created_by}`),
    el("td", {}, key.revoked_at ? `revoked ${when(key.revoked_at)}` : "active"),
    el("td", {}, key.revoked_at ? null : el("button", { type: "button", class: "small",
      "data-action": "revoke", onclick: () => revoke(tenant, key, rerender) }, "Revoke"))));
  return table(["Key", "Label", "Issued", "State", ""], rows, { class: "keys" });
}

function newKeyForm(tenant, rerender) {
  const label = el("input", { type: "text", name: "label", maxlength: 128,
    placeholder: "label (optional)" });
  const form = el("form", { class: "inline", "data-tenant": tenant }, label,
    el("button", { type: "submit" }, "Create key"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    issueKey(tenant, label.value.trim(), rerender);
  });
  return form;
}

function newTenantForm(rerender) {
  const name = el("input", { type: "text", name: "tenant", required: true,
    pattern: "[a-z0-9][a-z0-9._\\-]{0,62}", placeholder: "tenant name" });
  const form = el("form", { class: "inline", id: "new-tenant" }, name,
    el("button", { type: "submit" }, "Create tenant"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/admin/v1/tenants", { name: name.value.trim() });
      const created = name.value.trim();
      await rerender();
      showNotice(`Tenant ${created} created.`, "ok");
    } catch (failure) {
      showNotice(failure.message, "error");
    }
  });
  return form;
}

// `justIssued`: a key just created, {tenant, issued}, shown at the top this once.
export async function renderTenants(main, justIssued = null) {
  const rerender = (issued = null) => renderTenants(main, issued);
  const tenants = await api("GET", "/admin/v1/tenants");
  const keys = await Promise.all(tenants.map((t) => api("GET", `${base(t.name)}/keys`)));
  fill(main, justIssued ? shownOnce(justIssued) : null,
    el("h1", {}, "Tenants and keys"), newTenantForm(rerender),
    tenants.map((tenant, i) => section(tenant.name,
      el("p", { class: "muted" }, `created ${when(tenant.created_at)} by ${tenant.created_by}`),
      keys[i].length ? keysTable(tenant.name, keys[i], rerender)
        : el("p", { class: "muted" }, "No keys yet."),
      newKeyForm(tenant.name, rerender))));
}
