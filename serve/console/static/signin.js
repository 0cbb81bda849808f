// Sign in with the admin credential (every page, every action) or a tenant key (a
// read-only view of that tenant's adapters).

import { api } from "./api.js";
import { el } from "./dom.js";

export function renderSignIn(main, onSignedIn) {
  const key = el("input", { type: "password", name: "key", autocomplete: "off", required: true });
  const name = el("input", { type: "text", name: "name", maxlength: 64,
    placeholder: "optional, admin only" });
  const error = el("p", { class: "error", role: "alert", hidden: true });
  const form = el("form", { id: "sign-in", class: "card" },
    el("h1", {}, "Sign in"),
    el("label", {}, "API key (the admin credential, or a tenant key)", key),
    el("label", {}, "Your name, for the history", name),
    el("button", { type: "submit" }, "Sign in"), error);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const session = await api("POST", "/console/session",
        { key: key.value, name: name.value.trim() || null });
      onSignedIn(session);
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    }
  });
  main.replaceChildren(form);
  key.focus();
}
