// Hour slots for the charts: the last n hours, oldest first, keyed as the API's timestamps
// begin ("2026-12-05T14"), so that counts can be looked up by their hour.

export function lastHours(n) {
  const now = Date.now();
  return Array.from({ length: n }, (_, i) =>
    new Date(now - (n - 1 - i) * 3600_000).toISOString().slice(0, 13));
}

export function hourKey(iso) {
  return iso.slice(0, 13);
}

export function hourLabel(key) {
  return `${key.slice(11, 13)}h`;
}
