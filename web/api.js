// The studio's one way to the JSON API (/api/openapi.json): the session's
// token (from the page's #token= on first load) on every call, and an error
// that carries the field the server named.
export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

const hashToken = new URLSearchParams(location.hash.slice(1)).get("token");
if (hashToken) sessionStorage.setItem("atelier-token", hashToken);
export const token = sessionStorage.getItem("atelier-token");

export class ApiError extends Error {
  constructor(status, body) {
    super(body.error ?? `HTTP ${status}`);
    this.status = status;
    this.field = body.field;
  }
}

export async function api(method, path, body, raw) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  const out = await res.json().catch(() => ({}));
  if (!res.ok) throw new ApiError(res.status, out);
  return out;
}

/** A workspace image's URL. */
export const fileUrl = (path) =>
  `/api/file?path=${encodeURIComponent(path)}${token ? `&token=${encodeURIComponent(token)}` : ""}`;
