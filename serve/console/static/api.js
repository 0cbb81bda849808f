// Every call goes to this server's admin API (or the console's session routes), with the
// session cookie the browser holds; changes carry the session's CSRF token.

let csrfToken = "";

export function useCsrfToken(token) {
  csrfToken = token;
}

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (response.ok) return data;
  const error = data && data.error;
  if (response.status === 401) window.dispatchEvent(new Event("session-ended"));
  throw new ApiError(response.status, error ? error.message : `HTTP ${response.status}`,
    error ? error.code : null);
}

// "acme/support" -> "/admin/v1/adapters/acme/support"
export function adapterPath(adapterId) {
  const [tenant, name] = adapterId.split("/");
  return `/admin/v1/adapters/${encodeURIComponent(tenant)}/${encodeURIComponent(name)}`;
}
