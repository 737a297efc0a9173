// The studio's HTTP plumbing on node:http (no framework: a dozen JSON routes,
// one upload and one event stream need only routing, a body limit and
// headers): routes with path parameters, JSON bodies checked against their
// schemas, the token check off-localhost, the static pages of web/, and the
// OpenAPI document built from the same route table.
import { timingSafeEqual } from "node:crypto";
import { existsSync, readFileSync, statSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { extname, join, normalize } from "node:path";
import { check, HttpError, type JsonSchema } from "./validate.js";

export interface RequestContext {
  req: IncomingMessage;
  res: ServerResponse;
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  /** The raw body, for uploads (raw routes). */
  raw: Buffer | null;
}

export interface Route {
  method: "GET" | "POST" | "PUT" | "DELETE";
  /** OpenAPI style: /api/models/{name}. */
  path: string;
  summary: string;
  params?: Record<string, JsonSchema>;
  query?: Record<string, JsonSchema>;
  body?: JsonSchema;
  /** The body is a file (an upload), at most this many bytes. */
  rawLimit?: number;
  /** The handler writes the response itself (a stream). */
  stream?: boolean;
  handler(ctx: RequestContext): unknown | Promise<unknown>;
}

/** JSON bodies larger than this are refused (413). */
export const MAX_JSON_BODY = 1 << 20;

const CONTENT_TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".webp": "image/webp",
  ".bmp": "image/bmp",
  ".svg": "image/svg+xml",
  ".json": "application/json",
};
export const contentType = (file: string) => CONTENT_TYPES[extname(file).toLowerCase()] ?? "application/octet-stream";

const SECURITY_HEADERS = {
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'",
};

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    "Cache-Control": "no-store",
  });
  res.end(body);
}

export function sendFile(res: ServerResponse, file: string, extra: Record<string, string> = {}): void {
  const data = readFileSync(file);
  res.writeHead(200, {
    ...SECURITY_HEADERS,
    "Content-Type": contentType(file),
    "Content-Length": data.length,
    ...extra,
  });
  res.end(data);
}

/** Reads the body, refusing more than `limit` bytes with a 413 (checked before and while reading). */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers["content-length"] ?? Number.NaN);
  if (declared > limit) {
    req.resume();
    return Promise.reject(
      new HttpError(413, `the request body (${declared} bytes) is over the limit of ${limit} bytes`),
    );
  }
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    req.on("data", (d: Buffer) => {
      size += d.length;
      if (size > limit) {
        reject(new HttpError(413, `the request body is over the limit of ${limit} bytes`));
        req.destroy();
        return;
      }
      parts.push(d);
    });
    req.on("end", () => resolve(Buffer.concat(parts)));
    req.on("error", reject);
  });
}

interface Compiled {
  route: Route;
  re: RegExp;
  names: string[];
}

export class Router {
  readonly #routes: Compiled[] = [];

  constructor(readonly routes: Route[]) {
    for (const route of routes) {
      const names: string[] = [];
      const re = new RegExp(
        `^${route.path.replace(/\{(\w+)\}/g, (_, n: string) => {
          names.push(n);
          return "([^/]+)";
        })}$`,
      );
      this.#routes.push({ route, re, names });
    }
  }

  /** Answers an /api/ request; errors become { error, field } with their status. */
  async handle(req: IncomingMessage, res: ServerResponse, url: URL): Promise<void> {
    try {
      let pathMatched = false;
      for (const { route, re, names } of this.#routes) {
        const m = re.exec(url.pathname);
        if (!m) continue;
        pathMatched = true;
        if (route.method !== req.method) continue;
        const params: Record<string, string> = {};
        names.forEach((n, i) => {
          let v: string;
          try {
            v = decodeURIComponent(m[i + 1]);
          } catch {
            throw new HttpError(400, `path.${n}: not valid percent-encoding`, `path.${n}`);
          }
          const s = route.params?.[n];
          if (s) check(s, s.type === "integer" ? Number(v) : v, `path.${n}`);
          params[n] = v;
        });
        for (const [k, s] of Object.entries(route.query ?? {})) {
          const v = url.searchParams.get(k);
          if (v !== null) check(s, s.type === "integer" || s.type === "number" ? Number(v) : v, `query.${k}`);
        }
        let body: unknown;
        let raw: Buffer | null = null;
        if (route.rawLimit !== undefined) raw = await readBody(req, route.rawLimit);
        else if (route.body) {
          const text = (await readBody(req, MAX_JSON_BODY)).toString("utf8");
          const ct = String(req.headers["content-type"] ?? "");
          if (!/^application\/json\b/i.test(ct))
            throw new HttpError(415, "the request body must be JSON (Content-Type: application/json)");
          try {
            body = JSON.parse(text);
          } catch (e) {
            throw new HttpError(400, `body: not valid JSON (${(e as Error).message})`, "body");
          }
          check(route.body, body, "body");
        }
        const out = await route.handler({ req, res, params, query: url.searchParams, body, raw });
        if (!route.stream) sendJson(res, 200, out ?? { ok: true });
        return;
      }
      throw pathMatched
        ? new HttpError(405, `${req.method} is not allowed on ${url.pathname}`)
        : new HttpError(404, `no API endpoint ${url.pathname}`);
    } catch (e) {
      if (res.headersSent) {
        res.end();
        return;
      }
      if (e instanceof HttpError) sendJson(res, e.status, { error: e.message, ...(e.field ? { field: e.field } : {}) });
      else {
        console.error(`atelier studio: ${req.method} ${url.pathname}: ${(e as Error).stack ?? e}`);
        sendJson(res, 500, { error: (e as Error).message });
      }
    }
  }
}

export const TOKEN_COOKIE = "atelier_token";

const same = (given: string, token: string) => {
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
};

/**
 * How the request carries the token, or null: the Authorization header (Bearer T), ?token=T
 * (the address the studio prints; then a SameSite=Strict cookie carries it for the page's
 * own requests, <img> and EventSource included), or that cookie.
 */
export function tokenIn(req: IncomingMessage, url: URL, token: string): "header" | "query" | "cookie" | null {
  const auth = String(req.headers.authorization ?? "");
  if (auth.startsWith("Bearer ")) return same(auth.slice(7), token) ? "header" : null;
  const q = url.searchParams.get("token");
  if (q !== null) return same(q, token) ? "query" : null;
  const cookie = String(req.headers.cookie ?? "")
    .split(";")
    .map((c) => c.trim())
    .find((c) => c.startsWith(`${TOKEN_COOKIE}=`));
  return cookie && same(cookie.slice(TOKEN_COOKIE.length + 1), token) ? "cookie" : null;
}

/** A file of web/ (index.html for /), or false. */
export function serveStatic(res: ServerResponse, webDir: string, pathname: string): boolean {
  let rel: string;
  try {
    rel = pathname === "/" ? "index.html" : normalize(decodeURIComponent(pathname)).replace(/^[/\\]+/, "");
  } catch {
    return false; // not valid percent-encoding
  }
  if (rel.split(/[/\\]/).includes("..")) return false;
  const file = join(webDir, rel);
  if (!existsSync(file) || !statSync(file).isFile()) return false;
  sendFile(res, file, { "Cache-Control": "no-cache" });
  return true;
}

/** The OpenAPI 3.1 document of the routes. */
export function openApi(routes: Route[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    const parameters = [
      ...Object.entries(r.params ?? {}).map(([name, schema]) => ({ name, in: "path", required: true, schema })),
      ...Object.entries(r.query ?? {}).map(([name, schema]) => ({ name, in: "query", required: false, schema })),
    ];
    const op: Record<string, unknown> = {
      summary: r.summary,
      parameters,
      responses: {
        "200": { description: r.stream ? "text/event-stream" : "JSON" },
        "4XX": { description: "{ error, field }: what was wrong, and the field at fault" },
      },
    };
    if (r.body) op.requestBody = { required: true, content: { "application/json": { schema: r.body } } };
    if (r.rawLimit !== undefined) {
      op.requestBody = {
        required: true,
        description: `an image file, at most ${r.rawLimit} bytes`,
        content: { "application/octet-stream": { schema: { type: "string", format: "binary" } } },
      };
    }
    paths[r.path] ??= {};
    paths[r.path][r.method.toLowerCase()] = op;
  }
  return {
    openapi: "3.1.0",
    info: {
      title: "Atelier studio",
      version,
      description:
        "The studio's JSON API: the library's calls, over HTTP. Off localhost every request needs the token " +
        "(Authorization: Bearer TOKEN, or ?token=TOKEN). Every path is relative to the workspace.",
    },
    components: { securitySchemes: { token: { type: "http", scheme: "bearer" } } },
    security: [{ token: [] }],
    paths,
  };
}
