// Every change is confirmed in a dialog that asks why; the reason goes to the history.

import { el } from "./dom.js";

// Resolves to {reason, values} on confirmation (values: what `fields` hold), or null.
export function confirmChange({ title, detail, confirmLabel, fields = [] }) {
  const reason = el("textarea", { name: "reason", rows: 3, maxlength: 1000, required: true });
  const confirm = el("button", { type: "button", class: "danger", id: "confirm-button",
    disabled: true }, confirmLabel);
  const cancel = el("button", { type: "button", id: "cancel-button" }, "Cancel");
  const dialog = el("dialog", { id: "confirm" },
    el("h3", {}, title), el("p", {}, detail),
    fields.map((field) => el("label", {}, field.label, field.input)),
    el("label", {}, "Reason (kept in the history)", reason),
    el("div", { class: "buttons" }, cancel, confirm));
  reason.addEventListener("input", () => { confirm.disabled = !reason.value.trim(); });
  document.body.append(dialog);
  dialog.showModal();
  return new Promise((resolve) => {
    const close = (result) => { dialog.close(); dialog.remove(); resolve(result); };
    cancel.addEventListener("click", () => close(null));
    dialog.addEventListener("cancel", () => close(null));
    confirm.addEventListener("click", () => close({
      reason: reason.value.trim(),
      values: Object.fromEntries(fields.map((f) => [f.name, f.input.value])),
    }));
  });
}
